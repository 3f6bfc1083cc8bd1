"""Callbacks to apps: when a tenant's shot is scored or its character completes, POST it to the tenant's endpoints.

Two loops run in each gateway process (replicas share both):
- a JetStream durable pull consumer per event (`gateway-callbacks-shot-scored`, `...-character-completed`)
  adds one pending delivery per matching endpoint of the event's tenant (unique per endpoint and event, so a
  redelivered event adds nothing), then acks;
- a delivery loop claims due deliveries, signs them (Standard Webhooks; `webhook-id` is the delivery id, the
  same on every attempt), POSTs them, and records each attempt: delivered on a 2xx, otherwise due again after
  an exponential backoff with jitter, until `callback_max_attempts`, then failed. Redirects are not followed.

Before registering an endpoint and before every attempt, its URL must be http(s) and resolve to public
addresses only (`infra.safe_fetch.check_url`); `callback_allow_loopback` also lets 127.0.0.0/8 and ::1
through, for tests and local development, never private ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from contracts import STREAM_NAME, CharacterCompleted, Event, ShotScored
from infra.safe_fetch import FetchFailed, FetchRefused, Resolve, check_url, origin, parse_url, system_resolve
from infra.webhooks.standard import sign_standard_webhook
from services.gateway.adapters.callbacks import ClaimedDelivery, PostgresCallbacks
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

CALLBACK_EVENTS: dict[str, type[Event]] = {"ShotScored": ShotScored, "CharacterCompleted": CharacterCompleted}
DURABLES = {
    "ShotScored": "gateway-callbacks-shot-scored",
    "CharacterCompleted": "gateway-callbacks-character-completed",
}
MAX_URL_LENGTH = 2048
_ERROR_BODY_CHARS = 300  # how much of an app's error answer the log keeps


async def check_callback_url(url: str, *, resolve: Resolve, allow_loopback: bool = False) -> httpx.URL:
    """The URL if Likeness may call it; FetchRefused (not allowed) or FetchFailed (the name does not resolve)."""
    if len(url) > MAX_URL_LENGTH:
        raise FetchRefused(f"the URL is over {MAX_URL_LENGTH} characters")
    parsed = parse_url(url)
    trusted: tuple[str, ...] = ()
    if allow_loopback and parsed.scheme in ("http", "https") and parsed.host:
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            addresses = [parsed.host] if _is_ip(parsed.host) else await resolve(parsed.host, port)
        except OSError:
            addresses = []
        if addresses and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses):
            trusted = (origin(parsed),)
    await check_url(parsed, resolve=resolve, trusted_origins=trusted)
    return parsed


def callback_body(event: Event) -> str:
    """What an app receives: the event's type, id and time, its character (and shot), and `data`."""
    body: dict[str, Any] = {
        "type": event.type,
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(),
    }
    if isinstance(event, ShotScored):
        body |= {
            "character_id": str(event.character_id),
            "shot_id": str(event.shot_id),
            "data": event.score.model_dump(mode="json"),
        }
    elif isinstance(event, CharacterCompleted):
        body |= {
            "character_id": str(event.character_id),
            "data": event.model_dump(mode="json", include={"shots_total", "shots_scored", "shots_failed", "verdicts"}),
        }
    else:
        raise TypeError(f"{event.type} is not sent to apps")
    return json.dumps(body, separators=(",", ":"))


def retry_delay_s(attempts: int, *, base_s: float, max_s: float, jitter: Callable[[], float] = random.random) -> float:
    """After `attempts` failed attempts: base, 3 x base, 9 x base, ... capped at `max_s`, each within +-20%."""
    nominal = min(max_s, base_s * 3.0 ** max(0, attempts - 1))
    return float(nominal * (0.8 + 0.4 * jitter()))


def callback_client(timeout_s: float) -> httpx.AsyncClient:
    """No credentials or cookies, no redirects (a redirect could lead past the address check)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
        follow_redirects=False,
        headers={"User-Agent": "likeness-callbacks/1"},
    )


class Callbacks:
    """The consumer and the delivery loop; `resolve` may be swapped (tests) before events arrive."""

    def __init__(self, repo: PostgresCallbacks, client: httpx.AsyncClient, settings: GatewaySettings) -> None:
        self.repo = repo
        self.resolve: Resolve = system_resolve
        self._client = client
        self._settings = settings
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[JetStreamContext.PullSubscription] = []

    @classmethod
    def from_settings(cls, repo: PostgresCallbacks, settings: GatewaySettings) -> Callbacks:
        return cls(repo, callback_client(settings.callback_timeout_s), settings)

    async def check(self, url: str) -> httpx.URL:
        return await check_callback_url(
            url, resolve=self.resolve, allow_loopback=self._settings.callback_allow_loopback
        )

    async def start(self, js: JetStreamContext) -> None:
        """Bind the durable consumers (created on first start, from new events on), then run the loops."""
        for event_type, event in CALLBACK_EVENTS.items():
            durable = DURABLES[event_type]
            config = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_deliver=30,
                deliver_policy=DeliverPolicy.NEW,
            )
            sub = await js.pull_subscribe(event.subject, durable=durable, stream=STREAM_NAME, config=config)
            self._subscriptions.append(sub)
            self._tasks.append(asyncio.create_task(self._consume(sub, event), name=f"callbacks-{durable}"))
        self._tasks.append(asyncio.create_task(self._deliver_forever(), name="callbacks-delivery"))

    async def stop(self) -> None:
        """Stop taking work, let attempts in flight finish (within their time limit), then close."""
        self._stopping.set()
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self._settings.callback_timeout_s + 2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self._client.aclose()

    async def _consume(self, sub: JetStreamContext.PullSubscription, event: type[Event]) -> None:
        while not self._stopping.is_set():
            try:
                messages = await sub.fetch(16, timeout=1.0)
            except TimeoutError:
                continue
            except Exception:
                log.exception("callbacks: fetching %s failed; trying again in 1 s", event.event_type())
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await self._enqueue(message, event)

    async def _enqueue(self, message: Msg, event_class: type[Event]) -> None:
        try:
            event = event_class.model_validate_json(message.data)
        except ValidationError as error:
            log.error("callbacks: dropped a message on %s that is not a valid event: %s", message.subject, error)
            await message.term()
            return
        context = {"event_id": str(event.event_id), "correlation_id": str(event.correlation_id)}
        try:
            added = await self.repo.enqueue(event.tenant_id, event.event_id, event.type, callback_body(event))
        except Exception:
            delivered = message.metadata.num_delivered or 1
            delay = min(30.0, 0.5 * 2 ** (delivered - 1))
            log.exception("callbacks: recording deliveries failed; nak, retry in %.1f s", delay, extra=context)
            await message.nak(delay=delay)
            return
        await message.ack()
        if added:
            log.info("callbacks: %d deliveries of %s queued", added, event.type, extra=context)
            self._wake.set()

    async def _deliver_forever(self) -> None:
        settings = self._settings
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                claimed = await self.repo.claim(
                    limit=settings.callback_concurrency, lease_s=settings.callback_timeout_s + 30.0
                )
            except Exception:
                log.exception("callbacks: claiming deliveries failed; trying again")
                claimed = []
            if claimed:
                await asyncio.gather(*(self._attempt(delivery) for delivery in claimed))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.callback_poll_s):
                    await self._wake.wait()

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        """One attempt; never raises (a failure is recorded and retried)."""
        context = {
            "delivery_id": str(delivery.delivery_id),
            "endpoint_id": str(delivery.endpoint_id),
            "event_id": str(delivery.event_id),
            "attempt": delivery.attempts,
        }
        status_code: int | None = None
        retry_after_s: float | None = None
        try:
            status_code, error, retry_after_s = await self._post(delivery)
        except Exception as unexpected:  # recorded like any failed attempt; the loop goes on
            log.exception("callbacks: attempt failed unexpectedly", extra=context)
            error = f"internal error: {type(unexpected).__name__}"
        try:
            if error is None and status_code is not None:
                await self.repo.delivered(delivery, status_code)
                log.info("callbacks: delivered (HTTP %d)", status_code, extra=context)
                return
            settings = self._settings
            retry_in_s: float | None = None
            if delivery.attempts < settings.callback_max_attempts:
                retry_in_s = retry_delay_s(
                    delivery.attempts, base_s=settings.callback_backoff_s, max_s=settings.callback_backoff_max_s
                )
                if retry_after_s is not None:
                    retry_in_s = min(settings.callback_backoff_max_s, max(retry_in_s, retry_after_s))
            await self.repo.attempt_failed(delivery, status_code=status_code, error=error or "", retry_in_s=retry_in_s)
            if retry_in_s is None:
                log.warning("callbacks: gave up after %d attempts: %s", delivery.attempts, error, extra=context)
            else:
                log.info("callbacks: attempt failed (%s); again in %.1f s", error, retry_in_s, extra=context)
        except Exception:
            log.exception("callbacks: recording the attempt failed; it runs again when its claim lapses", extra=context)

    async def _post(self, delivery: ClaimedDelivery) -> tuple[int | None, str | None, float | None]:
        """(HTTP status, error or None when delivered, Retry-After seconds)."""
        try:
            url = await self.check(delivery.url)
        except (FetchRefused, FetchFailed) as problem:
            return None, f"not sent: {problem}", None
        body = delivery.body.encode()
        headers = {
            **sign_standard_webhook(delivery.secret, str(delivery.delivery_id), int(time.time()), body),
            "content-type": "application/json",
        }
        timeout_s = self._settings.callback_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async with self._client.stream("POST", url, content=body, headers=headers) as response:
                    if response.is_success:
                        return response.status_code, None, None
                    answer = await _start_of(response)
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {timeout_s:g} s", None
        except httpx.HTTPError as failure:
            return None, f"could not connect: {type(failure).__name__}", None
        retry_after = response.headers.get("retry-after", "")
        error = f"HTTP {response.status_code}" + (f": {answer}" if answer else "")
        return response.status_code, error, float(retry_after) if retry_after.isdigit() else None


async def _start_of(response: httpx.Response) -> str:
    read = b""
    async for chunk in response.aiter_bytes():
        read += chunk
        if len(read) >= _ERROR_BODY_CHARS:
            break
    return read[:_ERROR_BODY_CHARS].decode(errors="replace").strip()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
