"""Astria's callbacks: the HMAC token we put in each callback URL, checked when Astria calls it.

Astria neither signs nor retries callbacks, so the token in the URL is the only authentication: HMAC-SHA256
of `kind:ref` under ASTRIA_CALLBACK_SECRET, shared by the provider adapter (which builds the URLs) and the
gateway (which checks them). Also the tune and prompt shapes both sides read (provider-contracts.md section 2).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

PROVIDER_NAME: Final = "astria-tune"


class AstriaModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Tune(AstriaModel):
    id: int
    title: str | None = None
    name: str | None = None
    token: str | None = None
    base_tune_id: int | None = None
    model_type: str | None = None
    branch: str | None = None
    trained_at: datetime | None = None
    started_training_at: datetime | None = None
    eta: datetime | None = None
    created_at: datetime | None = None


class Prompt(AstriaModel):
    id: int
    tune_id: int | None = None
    text: str | None = None
    trained_at: datetime | None = None
    images: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class AstriaCallback:
    """A callback that passed `verify_callback`: which entity, our id for it, and Astria's object."""

    kind: Literal["tune", "prompt"]
    ref: str
    tune: Tune | None = None
    prompt: Prompt | None = None


class CallbackRejected(Exception):
    """A callback that is not ours (401: token) or not readable (400: body); the gateway answers `status`."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def callback_token(secret: SecretStr | str, kind: str, ref: str) -> str:
    """The token a callback URL carries: HMAC-SHA256 of `kind:ref`, so one leaked URL forges no other."""
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return hmac.new(key.encode(), f"{kind}:{ref}".encode(), hashlib.sha256).hexdigest()


def callback_url(base_url: str, secret: SecretStr, kind: Literal["tune", "prompt"], ref: str) -> str:
    params = {"kind": kind, "ref": ref, "token": callback_token(secret, kind, ref)}
    return str(httpx.URL(base_url).copy_merge_params(params))


def verify_callback(
    secret: SecretStr | str | None,
    url_or_query_token: str | None,
    body: bytes | str | Mapping[str, Any],
    *,
    kind: Literal["tune", "prompt"] | None = None,
    ref: str | None = None,
) -> AstriaCallback:
    """Check an Astria callback's token in constant time, then parse its body. Raises CallbackRejected.

    `url_or_query_token` is the URL Astria called (or its query string), whose `kind`, `ref` and
    `token` we put there; or the bare token, with `kind` and `ref` given here. No secret configured
    is a rejection: an unauthenticated callback is never accepted.
    """
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not key or not key.strip():
        raise CallbackRejected("no Astria callback secret is configured here", status=401)
    text = url_or_query_token or ""
    if "=" in text:
        query = urlsplit(text).query if "?" in text or "://" in text else text
        params = {name: values[-1] for name, values in parse_qs(query).items()}
        token, kind_text, ref = params.get("token", ""), params.get("kind", kind or ""), params.get("ref", ref or "")
    else:
        token, kind_text = text, kind or ""
    if kind_text not in ("tune", "prompt") or not ref:
        raise CallbackRejected("the callback URL names no kind (tune or prompt) and ref", status=401)
    expected = callback_token(key, kind_text, ref)
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise CallbackRejected("the callback's token does not match", status=401)
    entity_kind: Literal["tune", "prompt"] = "tune" if kind_text == "tune" else "prompt"
    try:
        data = json.loads(body) if isinstance(body, bytes | str) else body
    except ValueError:
        raise CallbackRejected("the callback body is not JSON", status=400) from None
    if not isinstance(data, Mapping):
        raise CallbackRejected("the callback body is not a JSON object", status=400)
    entity = data.get(entity_kind, data)  # `{"tune": {...}}` (the starter) or the tune itself (the docs)
    try:
        if entity_kind == "tune":
            return AstriaCallback("tune", ref, tune=Tune.model_validate(entity))
        return AstriaCallback("prompt", ref, prompt=Prompt.model_validate(entity))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise CallbackRejected(f"the callback body is not an Astria {entity_kind} ({problems})", status=400) from None
