"""Signing webhooks we send (Standard Webhooks, the scheme Replicate signs with; `replicate.verify_webhook` checks it).

The receiver gets three headers: `webhook-id` (stable across retries: deduplicate on it), `webhook-timestamp`
(unix seconds of this attempt: refuse old ones) and `webhook-signature` (`v1,<base64 HMAC-SHA256>` of
`<id>.<timestamp>.<body>`, keyed by the base64-decoded part of the `whsec_...` secret).
Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Final

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the prefix, not a secret
SECRET_BYTES: Final = 32  # the spec asks for 24 to 64


def new_secret() -> str:
    """A fresh signing secret, `whsec_<base64 of 32 random bytes>`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_...` secret (the prefix is optional); ValueError if it is not base64."""
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_<base64>") from None
    if not key:
        raise ValueError("a webhook secret is whsec_<base64> of at least one byte")
    return key


def sign_standard_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers for sending `body`."""
    if not msg_id or "." in msg_id:
        raise ValueError("a webhook id is a non-empty string without '.'")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}"}
