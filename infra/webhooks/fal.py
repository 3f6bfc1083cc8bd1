"""fal's webhook signature: Ed25519 over the request id, user id, timestamp and the body's sha256.

Contract: provider-contracts.md section 1, "Webhooks [doc]". A request submitted to the queue with
`?fal_webhook=<url>` is POSTed to that URL when it finishes: `{request_id, gateway_request_id, status:
"OK"|"ERROR", payload}` (on error also `error`, and `payload` is the error body; an unserializable
payload is null with `payload_error`). The headers `X-Fal-Webhook-Request-Id`, `-User-Id`,
`-Timestamp` (unix seconds) and `-Signature` (hex Ed25519) sign
`request_id \\n user_id \\n timestamp \\n sha256_hex(body)` with one of the keys fal publishes as a
JWKS (`JWKS_URL`, OKP/Ed25519, `x` base64url); any key may match. A timestamp more than the tolerance
(300 s) from now is refused, and the JWKS is cached for at most 24 hours.

`verify_fal_webhook`, `parse_jwks`, `sign_fal_webhook` and `jwks_document` are pure. `FalKeys` is the
one piece of I/O: the JWKS fetched on an injected `httpx.AsyncClient`, cached, and fetched again once
(at most every 60 s) when a signature matches no cached key: fal rotated its keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
from Crypto.PublicKey.ECC import EccKey
from Crypto.Signature import eddsa

PROVIDER_NAMES: Final = ("fal-instant-character", "fal-flux-lora", "fal-flux-redux")
JWKS_URL: Final = "https://rest.alpha.fal.ai/.well-known/jwks.json"
MAX_JWKS_TTL_S: Final = 86_400.0  # fal: cache the keys no more than 24 hours
REFETCH_INTERVAL_S: Final = 60.0  # a signature no cached key matches fetches again at most this often
MAX_JWKS_BYTES: Final = 64 * 1024
REQUEST_ID_HEADER: Final = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER: Final = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER: Final = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER: Final = "X-Fal-Webhook-Signature"
_HEADERS: Final = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)

Rejection = Literal[
    "missing_header", "bad_timestamp", "stale", "bad_signature", "no_keys", "no_key_matched", "bad_body"
]


class FalWebhookRejected(ValueError):
    """A delivery that must not be trusted; `reason` says which check refused it (the message says how)."""

    def __init__(self, reason: Rejection, message: str) -> None:
        super().__init__(message)
        self.reason: Rejection = reason


class FalKeysUnavailable(RuntimeError):
    """fal's public keys could not be fetched or read now: answer 503, and fal delivers again later."""


class FalJwksInvalid(ValueError):
    """A JWKS document that holds no usable Ed25519 key."""


@dataclass(frozen=True)
class FalDelivery:
    """A verified fal webhook. `request_id` is fal's (the queue submit's); deduplicate on it."""

    request_id: str
    user_id: str
    timestamp: int
    status: Literal["OK", "ERROR"]
    payload: dict[str, Any] | None
    error: str | None
    body: dict[str, Any]
    gateway_request_id: str | None = None
    payload_error: str | None = None


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs: `request_id \\n user_id \\n timestamp \\n sha256_hex(raw body)`, UTF-8."""
    return "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()


def verify_fal_webhook(
    headers: Mapping[str, str],
    body: bytes,
    public_keys: Sequence[EccKey],
    *,
    now: float,
    tolerance_s: float = 300.0,
) -> FalDelivery:
    """The delivery if one of `public_keys` signed it within `tolerance_s` of `now` (unix s); raises otherwise.

    `headers` may use any case. Raises `FalWebhookRejected` for a missing header, a timestamp that is
    not unix seconds or is too far from now (either way: a replay, or a clock far off), a signature that
    is not 64 bytes of hex, one no key verifies, a body that is not a JSON object, and a body whose
    `request_id` is not the signed one.
    """
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    values = [lowered.get(name.lower(), "") for name in _HEADERS]
    missing = [name for name, value in zip(_HEADERS, values, strict=True) if not value]
    if missing:
        raise FalWebhookRejected("missing_header", f"not a signed fal webhook: missing {', '.join(missing)} header(s)")
    request_id, user_id, timestamp, signature_hex = values
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise FalWebhookRejected(
            "bad_timestamp", f"{TIMESTAMP_HEADER} {timestamp[:40]!r} is not unix seconds"
        ) from None
    if abs(now - sent_at) > tolerance_s:
        raise FalWebhookRejected(
            "stale",
            f"fal webhook timestamp is {now - sent_at:.0f} s from now, outside the {tolerance_s:.0f} s tolerance "
            "(a replayed or delayed delivery, or a clock far off)",
        )
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise FalWebhookRejected("bad_signature", f"{SIGNATURE_HEADER} is not hex") from None
    if len(signature) != 64:
        raise FalWebhookRejected(
            "bad_signature", f"{SIGNATURE_HEADER} is {len(signature)} bytes; an Ed25519 signature is 64"
        )
    if not public_keys:
        raise FalWebhookRejected("no_keys", "no fal public key to check the webhook against (fetch fal's JWKS)")
    message = signed_message(request_id, user_id, timestamp, body)
    if not any(_verifies(key, message, signature) for key in public_keys):
        raise FalWebhookRejected(
            "no_key_matched",
            f"fal webhook signature matches none of fal's {len(public_keys)} public key(s): "
            "not from fal, or the body or a signed header changed",
        )
    return _delivery(request_id, user_id, sent_at, body)


def _verifies(key: EccKey, message: bytes, signature: bytes) -> bool:
    try:
        eddsa.new(key, "rfc8032").verify(message, signature)
    except ValueError:
        return False
    return True


def _delivery(request_id: str, user_id: str, sent_at: int, body: bytes) -> FalDelivery:
    try:
        parsed = json.loads(body)
    except ValueError as error:
        raise FalWebhookRejected("bad_body", f"fal webhook body is not JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise FalWebhookRejected("bad_body", "fal webhook body is not a JSON object")
    if parsed.get("request_id") != request_id:
        raise FalWebhookRejected(
            "bad_body", f"fal webhook body's request_id is not the signed {REQUEST_ID_HEADER} ({request_id[:80]!r})"
        )
    status = parsed.get("status")
    if status not in ("OK", "ERROR"):
        raise FalWebhookRejected("bad_body", f"fal webhook status {str(status)[:40]!r} is neither 'OK' nor 'ERROR'")
    payload = parsed.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise FalWebhookRejected("bad_body", "fal webhook payload is neither a JSON object nor null")
    return FalDelivery(
        request_id=request_id,
        user_id=user_id,
        timestamp=sent_at,
        status="OK" if status == "OK" else "ERROR",
        payload=payload,
        error=_text(parsed.get("error")),
        body=parsed,
        gateway_request_id=_text(parsed.get("gateway_request_id")),
        payload_error=_text(parsed.get("payload_error")),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def parse_jwks(document: object) -> list[EccKey]:
    """The Ed25519 public keys of a JWKS (`kty` OKP, `crv` Ed25519, `x` base64url); other keys are skipped.

    Raises `FalJwksInvalid` when the document is not a JWKS or holds no usable Ed25519 key.
    """
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FalJwksInvalid("fal's JWKS is not a JSON object with a 'keys' list")
    keys: list[EccKey] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        encoded = entry.get("x")
        if not isinstance(encoded, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            keys.append(eddsa.import_public_key(raw))
        except (binascii.Error, ValueError):
            continue  # not 32 bytes, or not a point on the curve
    if not keys:
        raise FalJwksInvalid(f"fal's JWKS holds no usable Ed25519 (OKP) key among its {len(entries)} key(s)")
    return keys


def sign_fal_webhook(
    private_key: EccKey, *, request_id: str, user_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The four `X-Fal-Webhook-*` headers for `body`, signed as fal signs (for fakes and tests)."""
    message = signed_message(request_id, user_id, str(timestamp), body)
    signature = eddsa.new(private_key, "rfc8032").sign(message)
    return {
        REQUEST_ID_HEADER: request_id,
        USER_ID_HEADER: user_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature.hex(),
    }


def jwks_document(*keys: EccKey) -> dict[str, Any]:
    """A JWKS publishing the public halves of `keys` (a private key given here exports only its public half)."""
    published = []
    for key in keys:
        raw = key.public_key().export_key(format="raw")
        published.append(
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"),
                "kid": hashlib.sha256(raw).hexdigest()[:16],
                "use": "sig",
                "alg": "EdDSA",
            }
        )
    return {"keys": published}


class FalKeys:
    """fal's public keys, fetched from its JWKS on an injected client and cached for `ttl_s` (24 h at most).

    `verify` checks a delivery with the cached keys; when the signature matches none, the JWKS is
    fetched again (fal may have rotated its keys), but at most once every `refetch_interval_s`, so forged
    deliveries cannot make us hammer fal. A fetch that fails raises `FalKeysUnavailable`. Redirects are
    never followed: the keys come from `url` itself.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str = JWKS_URL,
        ttl_s: float = MAX_JWKS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        refetch_interval_s: float = REFETCH_INTERVAL_S,
        timeout_s: float = 10.0,
    ) -> None:
        self._client = client
        self.url = url
        self.ttl_s = min(max(ttl_s, 0.0), MAX_JWKS_TTL_S)
        self._clock = clock
        self.refetch_interval_s = refetch_interval_s
        self._timeout_s = timeout_s
        self._keys: list[EccKey] = []
        self._fetched_at: float | None = None  # when the cached keys were fetched
        self._attempted_at: float | None = None  # when a fetch was last tried, well or not
        self._lock = asyncio.Lock()
        self.fetches = 0  # every fetch tried

    def __repr__(self) -> str:
        return f"FalKeys(url={self.url!r}, cached={len(self._keys)} key(s))"

    async def keys(self) -> list[EccKey]:
        """The cached keys, fetched first when there are none or they are older than `ttl_s`."""
        async with self._lock:
            if not self._fresh():
                await self._fetch()
            return list(self._keys)

    async def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float = 300.0
    ) -> FalDelivery:
        """As `verify_fal_webhook`, with fal's keys; raises `FalKeysUnavailable` when they cannot be had.

        Headers, timestamp and signature format are checked before any key is fetched, so a delivery that
        cannot be fal's never makes us call fal.
        """
        try:
            verify_fal_webhook(headers, body, [], now=now, tolerance_s=tolerance_s)
        except FalWebhookRejected as rejected:
            if rejected.reason != "no_keys":
                raise
        keys = await self.keys()
        try:
            return verify_fal_webhook(headers, body, keys, now=now, tolerance_s=tolerance_s)
        except FalWebhookRejected as rejected:
            if rejected.reason != "no_key_matched" or not await self._refetch_for_rotation(keys):
                raise
        return verify_fal_webhook(headers, body, self._keys, now=now, tolerance_s=tolerance_s)

    def _fresh(self) -> bool:
        return bool(self._keys) and self._fetched_at is not None and self._clock() - self._fetched_at < self.ttl_s

    async def _refetch_for_rotation(self, tried: list[EccKey]) -> bool:
        """Fetch again if none was tried in the last interval; True when there are keys not yet tried."""
        async with self._lock:
            if self._keys != tried:  # another delivery fetched meanwhile
                return True
            if self._attempted_at is not None and self._clock() - self._attempted_at < self.refetch_interval_s:
                return False
            await self._fetch()
            return self._keys != tried

    async def _fetch(self) -> None:
        self.fetches += 1
        self._attempted_at = self._clock()
        try:
            response = await self._client.get(
                self.url, headers={"Accept": "application/json"}, follow_redirects=False, timeout=self._timeout_s
            )
        except httpx.HTTPError as error:
            raise FalKeysUnavailable(
                f"fal's public keys could not be fetched from {self.url} ({type(error).__name__})"
            ) from None
        if response.status_code != 200:
            raise FalKeysUnavailable(f"fal's public keys: {self.url} answered HTTP {response.status_code}, not 200")
        if len(response.content) > MAX_JWKS_BYTES:
            raise FalKeysUnavailable(f"fal's JWKS at {self.url} is over {MAX_JWKS_BYTES} bytes")
        try:
            keys = parse_jwks(response.json())
        except (ValueError, FalJwksInvalid) as error:
            reason = error if isinstance(error, FalJwksInvalid) else "not JSON"
            raise FalKeysUnavailable(f"fal's JWKS at {self.url} is not usable: {reason}") from None
        self._keys, self._fetched_at = keys, self._clock()
