"""Leonardo's webhook: an unsigned body with the callback key set on the API key as a bearer token."""

from __future__ import annotations

import hmac
from typing import Final

from pydantic import SecretStr

PROVIDER_NAME: Final = "leonardo-character-reference"


def verify_webhook(authorization: str | None, callback_key: SecretStr | str | None) -> bool:
    """Whether a webhook call carries the callback key configured on the Leonardo API key.

    Leonardo sends `authorization: Bearer <webhook callback API key>` (docs: guide to the webhook
    callback feature); the body is not signed. No key configured, or no header, is False: an
    unauthenticated webhook is never accepted. The compare is constant-time.
    """
    expected = callback_key.get_secret_value() if isinstance(callback_key, SecretStr) else callback_key
    if not expected or not expected.strip() or authorization is None:
        return False
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())
