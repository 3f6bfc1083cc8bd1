"""HTTP plumbing every provider adapter shares: retries, rate limits, a concurrency cap, a key kept secret.

`ProviderHttp.call` makes one logical call. It retries, with exponential backoff and jitter, what can
succeed on a second try: 429 (waiting at least its Retry-After), 5xx, time-outs and connection errors.
After `RetryPolicy.retries` retries it raises `TransientProviderError` (with `retry_after_s`), and
the job-level retry (a nak with a delay) takes over. Any other 4xx is `PermanentProviderError` at
once, carrying the provider's own message. The API key is attached by `ProviderKeyAuth` to requests
for the provider's own origin only (never to a CDN an image is downloaded from), and no exception,
log line or repr built here contains it. Each logical call is counted by outcome (ok, rate_limited,
transient, refused, timeout) and timed: `likeness_provider_calls_total`, `likeness_provider_call_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx
from pydantic import SecretStr

from infra.metrics import record_provider_call
from services.provider_adapter.ports import PermanentProviderError, TransientProviderError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# Every response of a Likeness fake provider server carries this header; no real provider sends it.
FAKE_MARKER_HEADER: Final = "X-Likeness-Fake"
# The fake's description of what it did to the reference, on the image it serves.
FAKE_TRANSFORM_HEADER: Final = "X-Likeness-Fake-Transform"

REDACTED: Final = "[redacted]"
_MESSAGE_LIMIT: Final = 500


@dataclass(frozen=True)
class RetryPolicy:
    """In-call retries: `retries` more tries after the first, `base_s` doubling up to `cap_s`, +-`jitter`."""

    retries: int = 3
    base_s: float = 0.5
    cap_s: float = 8.0
    jitter: float = 0.2
    # A Retry-After longer than this is not slept through here (holding a concurrency slot): the
    # call gives up at once and the job-level retry waits instead.
    max_retry_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.base_s < 0 or self.cap_s < self.base_s or not 0 <= self.jitter < 1:
            raise ValueError(f"RetryPolicy needs retries >= 0, 0 <= base_s <= cap_s, 0 <= jitter < 1: {self}")

    def backoff_s(self, retry: int, draw: float) -> float:
        """The wait before retry number `retry` (1-based); `draw` in [0, 1) places it within the jitter."""
        exponential: float = self.base_s * 2.0 ** (retry - 1)
        return min(self.cap_s, exponential) * (1.0 + self.jitter * (2.0 * draw - 1.0))


def http_timeout(
    *, connect_s: float, read_s: float, write_s: float | None = None, pool_s: float = 10.0
) -> httpx.Timeout:
    return httpx.Timeout(connect=connect_s, read=read_s, write=write_s if write_s is not None else read_s, pool=pool_s)


def new_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """The client a provider adapter is given: explicit time-outs, no redirects unless a call asks."""
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, headers={"User-Agent": "likeness/0.1"})


def origin(url: httpx.URL | str) -> str:
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}".lower()


class ProviderKeyAuth(httpx.Auth):
    """`Authorization: <scheme> <key>` on requests to the provider's own origins, and nowhere else.

    The key stays a SecretStr until the moment a request is sent; `redact` scrubs it from any text
    (a provider that echoes headers back in an error body cannot leak it into our messages).
    """

    def __init__(self, key: SecretStr, *, scheme: str, origins: Collection[str]) -> None:
        self._key = key
        self._scheme = scheme
        self._origins = frozenset(origin(url) for url in origins)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) in self._origins:
            request.headers["Authorization"] = f"{self._scheme} {self._key.get_secret_value()}"
        yield request

    def redact(self, text: str) -> str:
        secret = self._key.get_secret_value()
        return text.replace(secret, REDACTED) if secret else text

    def __repr__(self) -> str:
        return f"ProviderKeyAuth(scheme={self._scheme!r}, key={self._key!r}, origins={sorted(self._origins)})"


def retry_after_s(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110). None if absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(0.0, when.timestamp() - now)


def describe_error(response: httpx.Response, redact: Callable[[str], str] = str) -> str:
    """The provider's own words for a failed call, readable in one line.

    FastAPI-style `{"detail": [{"loc": ["body", "prompt"], "msg": "field required"}, ...]}` becomes
    "prompt: field required; ...", a string `detail`, `error` or `message` is used as it is, anything
    else is the start of the body. Echoed inputs (`input`, often a whole data: URI) are left out.
    `redact` scrubs secrets before the text is cut short (a cut must not leave half a key).
    """
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        for key in ("detail", "error", "message"):
            found = body.get(key)
            if isinstance(found, str) and found.strip():
                return _clip(redact(found.strip()))
            if isinstance(found, list) and found:
                return _clip(redact("; ".join(_describe_item(item) for item in found)))
    text = redact(response.text.strip())
    return _clip(text) if text else f"HTTP {response.status_code} with an empty body"


def _describe_item(item: object) -> str:
    if not isinstance(item, Mapping):
        return str(item)
    where = [str(part) for part in item.get("loc") or [] if part != "body"]
    message = str(item.get("msg") or item.get("message") or item.get("type") or item)
    return f"{'.'.join(where)}: {message}" if where else message


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


_NO_AUTH: Final = httpx.Auth()  # sends the request as it is


class ProviderRefused(PermanentProviderError):
    """A provider answered 4xx (not 429): retrying cannot help. `response` is kept for its body."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(message)
        self.response = response


class ProviderHttp:
    """One provider's HTTP calls: an injected client, its key, in-call retries and a concurrency cap.

    `slots` bounds the provider jobs in flight at once (fal accounts start at 2 requests in progress);
    an adapter holds a slot for a whole job, from submit to download.
    """

    def __init__(
        self,
        provider: str,
        client: httpx.AsyncClient,
        *,
        auth: ProviderKeyAuth,
        concurrency: int,
        key_setting: str = "its key setting",
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
        draw: Callable[[], float] = random.random,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"{provider}: concurrency must be at least 1, got {concurrency}")
        self.provider = provider
        self.client = client
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self.slots = slots or asyncio.Semaphore(concurrency)  # shared where one account serves several adapters
        self.concurrency = concurrency
        self.key_setting = key_setting
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._draw = draw

    def __repr__(self) -> str:
        return f"ProviderHttp({self.provider!r}, concurrency={self.concurrency}, auth={self.auth!r})"

    async def call(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, Any] | None = None,
        authenticated: bool = True,
        retries: int | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """One logical call; a 2xx response, or ProviderRefused (a 4xx) / TransientProviderError.

        `what` names the call in messages ("submit", "status"); `retries` overrides the policy's. A
        multipart body is `data` (form fields) plus `files`. `authenticated=False` sends no key at all,
        whatever the URL (a presigned upload to someone else's storage).
        """
        allowed = self.retry.retries if retries is None else retries
        tries = allowed + 1
        failure, wait_hint = "", None
        started, kind = time.monotonic(), "transient"  # likeness_provider_calls{outcome=kind of the last failure}
        for attempt in range(1, tries + 1):
            try:
                response = await self.client.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    data=data,
                    files=files,
                    auth=self.auth if authenticated else _NO_AUTH,
                    follow_redirects=follow_redirects,
                )
            except httpx.TimeoutException as error:
                failure, wait_hint, kind = f"timed out ({type(error).__name__})", None, "timeout"
            except httpx.TransportError as error:
                failure, wait_hint, kind = f"connection failed ({type(error).__name__})", None, "transient"
            else:
                if response.is_success:
                    record_provider_call(self.provider, "ok", time.monotonic() - started)
                    return response
                failure = f"HTTP {response.status_code}: {describe_error(response, self.auth.redact)}"
                wait_hint, kind = None, "transient"
                if response.status_code == 429:
                    kind = "rate_limited"
                    wait_hint = retry_after_s(response.headers.get("Retry-After"), now=self._wall_clock())
                    if wait_hint is not None and wait_hint > self.retry.max_retry_after_s:
                        record_provider_call(self.provider, kind, time.monotonic() - started)
                        raise TransientProviderError(
                            f"{self.provider} {what}: rate limited, {failure}; retry after {wait_hint:.0f} s",
                            retry_after_s=wait_hint,
                        )
                elif response.status_code < 500:
                    record_provider_call(self.provider, "refused", time.monotonic() - started)
                    raise ProviderRefused(self._refusal(what, response.status_code, failure), response)
            if attempt < tries:
                delay = self.retry.backoff_s(attempt, self._draw())
                delay = max(delay, wait_hint) if wait_hint is not None else delay
                log.warning(
                    "%s %s: %s; retry %d of %d in %.2f s",
                    self.provider,
                    what,
                    failure,
                    attempt,
                    allowed,
                    delay,
                    extra={"provider": self.provider, "call": what},
                )
                await self._sleep(delay)
        record_provider_call(self.provider, kind, time.monotonic() - started)
        raise TransientProviderError(
            f"{self.provider} {what}: {failure} (gave up after {tries} tries)",
            retry_after_s=wait_hint,
        )

    def _refusal(self, what: str, status: int, failure: str) -> str:
        if status in (401, 403):
            return f"{self.provider} rejected the API key on {what} ({failure}); check {self.key_setting}"
        return f"{self.provider} refused {what} ({failure})"
