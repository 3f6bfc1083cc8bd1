"""The HTTP plumbing provider adapters share: what is retried, how long it waits, where the key goes."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from pydantic import SecretStr

from services.provider_adapter.ports import PermanentProviderError, ProviderError, TransientProviderError
from services.provider_adapter.providers.http import (
    REDACTED,
    ProviderHttp,
    ProviderKeyAuth,
    ProviderRefused,
    RetryPolicy,
    describe_error,
    retry_after_s,
)
from tests.fakes import RecordingSleep

KEY = "key-id-4f1e:key-secret-9d2c7a"
QUEUE = "https://queue.provider.test"
T0 = 1_790_000_000.0


Handler = Callable[[httpx.Request], httpx.Response]


def provider_http(handler: Handler, sleep: RecordingSleep, retry: RetryPolicy | None = None) -> ProviderHttp:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    auth = ProviderKeyAuth(SecretStr(KEY), scheme="Key", origins=[QUEUE])
    return ProviderHttp(
        "testprov", client, auth=auth, concurrency=2, key_setting="TEST_KEY", retry=retry, sleep=sleep, draw=lambda: 0.5
    )


def answers(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler, seen


def all_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(error)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        (format_datetime(datetime.fromtimestamp(T0 + 7, UTC), usegmt=True), 7.0),
        (format_datetime(datetime.fromtimestamp(T0 - 60, UTC), usegmt=True), 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(header: str | None, expected: float | None) -> None:
    assert retry_after_s(header, now=T0) == expected


def test_backoff_doubles_up_to_the_cap_within_the_jitter() -> None:
    policy = RetryPolicy(retries=5, base_s=0.5, cap_s=3.0, jitter=0.2)
    assert [policy.backoff_s(n, 0.5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff_s(2, 0.0) == pytest.approx(0.8)
    assert policy.backoff_s(2, 0.999999) == pytest.approx(1.2, abs=1e-5)


def test_fastapi_validation_errors_read_as_one_line_without_the_echoed_input() -> None:
    body = {
        "detail": [
            {"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"},
            {
                "loc": ["body", "image_size", "width"],
                "msg": "Input should be <= 2048",
                "input": "data:image/png;base64,AAAA",
            },
        ]
    }
    text = describe_error(httpx.Response(422, json=body))
    assert text == "prompt: Field required; image_size.width: Input should be <= 2048"
    assert describe_error(
        httpx.Response(504, json={"detail": "Request timed out", "error_type": "request_timeout"})
    ) == ("Request timed out")
    assert describe_error(httpx.Response(502, text="<html>bad gateway</html>")) == "<html>bad gateway</html>"
    assert describe_error(httpx.Response(500)) == "HTTP 500 with an empty body"
    assert len(describe_error(httpx.Response(500, text="x" * 5000))) == 500


async def test_the_key_goes_to_the_providers_origin_and_nowhere_else() -> None:
    handler, seen = answers(httpx.Response(200, json={}))
    http = provider_http(handler, RecordingSleep())
    await http.call("GET", f"{QUEUE}/requests/1/status", what="status")
    await http.call("GET", "https://cdn.provider.test/files/a.png", what="image download")
    await http.call("GET", "http://queue.provider.test/downgraded", what="status")
    assert seen[0].headers["Authorization"] == f"Key {KEY}"
    assert "Authorization" not in seen[1].headers
    assert "Authorization" not in seen[2].headers  # another scheme is another origin
    assert KEY not in repr(http)


async def test_429_waits_at_least_retry_after_then_succeeds() -> None:
    handler, seen = answers(httpx.Response(429, headers={"Retry-After": "4"}), httpx.Response(200, json={"ok": True}))
    sleep = RecordingSleep()
    response = await provider_http(handler, sleep).call("POST", f"{QUEUE}/m", what="submit", json={})
    assert response.json() == {"ok": True}
    assert len(seen) == 2
    assert sleep.calls == [4.0]


async def test_a_retry_after_too_long_to_hold_a_slot_goes_back_to_the_job_retry() -> None:
    handler, seen = answers(httpx.Response(429, headers={"Retry-After": "120"}))
    with pytest.raises(TransientProviderError) as raised:
        await provider_http(handler, RecordingSleep()).call("POST", f"{QUEUE}/m", what="submit")
    assert raised.value.retry_after_s == 120.0
    assert len(seen) == 1


async def test_5xx_and_network_errors_are_retried_with_growing_waits_then_transient() -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(503, json={"detail": "runner_scheduling_failure"})

    sleep = RecordingSleep()
    http = provider_http(flaky, sleep, RetryPolicy(retries=3, base_s=0.5, cap_s=8.0, jitter=0.0))
    with pytest.raises(TransientProviderError, match="gave up after 4 tries") as raised:
        await http.call("GET", f"{QUEUE}/s", what="status")
    assert calls == 4
    assert sleep.calls == [0.5, 1.0, 2.0]
    assert "HTTP 503: runner_scheduling_failure" in str(raised.value)


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_other_4xx_fail_at_once_with_the_providers_message(status: int) -> None:
    handler, seen = answers(httpx.Response(status, json={"detail": [{"loc": ["body", "seed"], "msg": "bad seed"}]}))
    with pytest.raises(PermanentProviderError, match="seed: bad seed"):
        await provider_http(handler, RecordingSleep()).call("POST", f"{QUEUE}/m", what="submit")
    assert len(seen) == 1


async def test_a_refused_key_names_the_setting_and_never_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    handler, _ = answers(httpx.Response(401, json={"detail": "Unauthorized"}))
    with pytest.raises(PermanentProviderError, match="check TEST_KEY") as raised:
        await provider_http(handler, RecordingSleep()).call("POST", f"{QUEUE}/m", what="submit")
    assert KEY not in all_text(raised.value)
    assert KEY not in caplog.text


async def test_a_provider_echoing_the_key_back_is_redacted_in_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text=f"upstream rejected headers: {dict(request.headers)}")

    with pytest.raises(ProviderError) as raised:
        await provider_http(echo, RecordingSleep()).call("GET", f"{QUEUE}/s", what="status")
    assert REDACTED in str(raised.value)
    assert KEY not in all_text(raised.value)
    assert KEY not in caplog.text
    assert "retry 1 of 3" in caplog.text


async def test_a_multipart_call_is_retried_whole_and_an_unauthenticated_one_carries_no_key() -> None:
    handler, seen = answers(httpx.Response(503), httpx.Response(204))
    http = provider_http(handler, RecordingSleep())
    files = {"file": ("ref.png", b"\x89PNG fake bytes", "image/png")}

    await http.call("POST", f"{QUEUE}/upload", what="upload", data={"key": "k1"}, files=files, authenticated=False)

    assert len(seen) == 2  # the 503 was retried with the same body
    for request in seen:
        body = request.read()
        assert b'name="key"' in body
        assert b"\x89PNG fake bytes" in body
        assert "Authorization" not in request.headers  # not even to the key's own origin


async def test_a_refusal_keeps_the_response_for_its_body() -> None:
    handler, _ = answers(httpx.Response(400, json={"node_errors": {"3": "missing input"}}))
    http = provider_http(handler, RecordingSleep())
    with pytest.raises(ProviderRefused) as refused:
        await http.call("POST", f"{QUEUE}/prompt", what="prompt", json={}, params={"client_id": "c1"})
    assert refused.value.response.json() == {"node_errors": {"3": "missing input"}}
    assert refused.value.response.request.url.params["client_id"] == "c1"
    assert isinstance(refused.value, PermanentProviderError)
