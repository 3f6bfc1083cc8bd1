"""Replicate's webhook signature (Standard Webhooks: HMAC-SHA256 of `id.timestamp.body`, keyed by the `whsec_` secret).

Contract: provider-contracts.md section 5 (replicate.com/docs/topics/webhooks/verify-webhook).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Final

from pydantic import SecretStr

PROVIDER_NAME: Final = "replicate-flux-lora"


class WebhookVerificationError(ValueError):
    """A webhook that must not be trusted: missing headers, a bad signature, a stale timestamp, a bad body."""


def verify_webhook(
    secret: str | SecretStr, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float = 300.0
) -> dict[str, Any]:
    """The webhook's JSON payload (a prediction or training object) if Replicate signed it; raises otherwise.

    `headers` may use any case. `secret` is the `whsec_...` key from `GET /v1/webhooks/default/secret`.
    A timestamp more than `tolerance_s` from `now` (unix seconds) is refused: a replayed delivery.
    Deduplicate on the `webhook-id` header: a resent webhook keeps its id.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id", "").strip()
    timestamp = lowered.get("webhook-timestamp", "").strip()
    signatures = lowered.get("webhook-signature", "").strip()
    missing = [name for name, value in (("webhook-id", webhook_id), ("webhook-timestamp", timestamp)) if not value]
    if not signatures:
        missing.append("webhook-signature")
    if missing:
        raise WebhookVerificationError(f"not a signed Replicate webhook: missing {', '.join(missing)} header(s)")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp!r} is not unix seconds") from None
    if abs(now - sent_at) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook timestamp is {now - sent_at:.0f} s from now, outside the {tolerance_s:.0f} s tolerance "
            "(a replayed or delayed delivery)"
        )
    raw_secret = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    encoded = raw_secret.split("_", 1)[1] if raw_secret.startswith("whsec_") else raw_secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not whsec_<base64>; fetch it again") from None
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    offered = [entry.partition(",") for entry in signatures.split()]
    if not any(version == "v1" and hmac.compare_digest(expected, value.encode()) for version, _, value in offered):
        raise WebhookVerificationError("webhook signature does not match: not from Replicate, or the body changed")
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise WebhookVerificationError(f"webhook body is not JSON ({error})") from None
    if not isinstance(payload, dict):
        raise WebhookVerificationError("webhook body is not a JSON object")
    return payload
