"""The signer of the callbacks we send, checked by the verifier we use on Replicate's (the same scheme)."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from infra.webhooks.replicate import WebhookVerificationError, verify_webhook
from infra.webhooks.standard import new_secret, secret_key, sign_standard_webhook
from services.gateway.outbound import retry_delay_s

BODY = json.dumps({"type": "ShotScored", "event_id": str(uuid.uuid4())}).encode()


def test_the_standard_webhooks_test_vector_is_reproduced() -> None:
    # From the Standard Webhooks reference libraries' tests.
    headers = sign_standard_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_a_signed_body_passes_the_replicate_verifier() -> None:
    secret = new_secret()
    now = int(time.time())
    headers = sign_standard_webhook(secret, str(uuid.uuid4()), now, BODY)
    assert verify_webhook(secret, headers, BODY, now=now) == json.loads(BODY)


@pytest.mark.parametrize("change", ["body", "secret", "id", "timestamp"])
def test_anything_changed_after_signing_fails_verification(change: str) -> None:
    secret, msg_id, now = new_secret(), str(uuid.uuid4()), int(time.time())
    headers = sign_standard_webhook(secret, msg_id, now, BODY)
    body = BODY
    if change == "body":
        body = BODY.replace(b"ShotScored", b"ShotFailed")
    elif change == "secret":
        secret = new_secret()
    elif change == "id":
        headers["webhook-id"] = str(uuid.uuid4())
    else:
        headers["webhook-timestamp"] = str(now - 1)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(secret, headers, body, now=now)


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert secret_key(first) == base64.b64decode(first.removeprefix("whsec_"))


def test_a_malformed_secret_or_id_is_refused() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        sign_standard_webhook("whsec_not base64!", "msg_1", 1, BODY)
    with pytest.raises(ValueError, match="webhook id"):
        sign_standard_webhook(new_secret(), "a.b", 1, BODY)


def test_retries_back_off_threefold_with_jitter_and_a_cap() -> None:
    middle = [retry_delay_s(n, base_s=10, max_s=3600, jitter=lambda: 0.5) for n in range(1, 9)]
    assert middle == [10, 30, 90, 270, 810, 2430, 3600, 3600]
    assert retry_delay_s(1, base_s=10, max_s=3600, jitter=lambda: 0.0) == pytest.approx(8.0)
    assert retry_delay_s(1, base_s=10, max_s=3600, jitter=lambda: 1.0) == pytest.approx(12.0)
