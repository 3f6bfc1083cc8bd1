"""NATS JetStream conventions in one place: the stream, consumers, publishing and settling messages."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, NatsRouter, PullSub
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import BadRequestError

from contracts import STREAM_NAME, STREAM_SUBJECTS, Event
from infra.dead_letters import MAX_DELIVER, REDRIVE_HEADER, DeadLetterMiddleware, GiveUp
from infra.dead_letters import backoff_s as backoff_s  # re-exported: services import it from the bus
from infra.delivery import Publish
from infra.metrics import record_handled
from infra.settings import StreamRetention
from infra.stream_order import StreamOrder
from infra.tracing import ConsumerSpans, mark_failed, mark_retried, trace_headers

log = logging.getLogger(__name__)

# Retention: events are the history operators replay from, so keep them a while. The default; the services
# declare the stream with LIKENESS_STREAM_MAX_AGE_DAYS and LIKENESS_STREAM_MAX_BYTES (infra.settings).
STREAM_MAX_AGE_S = 30 * 24 * 3600
# Publishes carrying a Nats-Msg-Id seen within this window are stored once.
DUPLICATE_WINDOW_S = 2 * 60

STREAM = JStream(
    name=STREAM_NAME,
    subjects=STREAM_SUBJECTS,
    duplicate_window=DUPLICATE_WINDOW_S,
    max_age=STREAM_MAX_AGE_S,
    description="Every Likeness event and command (likeness.<entity>.<event>.v<n>)",
    declare=False,  # declared once by Runtime.declare_stream with all subjects, not per subscriber
)


class RetryLater(Exception):
    """Raised by a handler when the message should come back after `delay_s` (not an error)."""

    def __init__(self, reason: str, delay_s: float = 1.0) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


def create_broker(nats_url: str, *, name: str, dead_letters: DeadLetterMiddleware | None = None) -> NatsBroker:
    # per-message logs at DEBUG: the handlers log what matters, with ids
    return NatsBroker(
        nats_url,
        name=f"likeness-{name}",
        graceful_timeout=15.0,
        logger=log,
        log_level=logging.DEBUG,
        # outermost first: each message's CONSUMER span (infra.tracing) around the dead-letter handling
        middlewares=(ConsumerSpans(name),) if dead_letters is None else (ConsumerSpans(name), dead_letters),
    )


# A consumer group's durables are named <durable>--<group> (NATS durable names may not hold a dot).
GROUP_SEPARATOR = "--"
_consumer_group = ""  # set by Runtime.__init__ (use_consumer_group) before its routers are built
# (durable, subject) of every durable consumer this process declared, by consumer group ("": none)
GROUP_DURABLES: dict[str, dict[str, str]] = {}
STREAM_ORDER: dict[str, StreamOrder] = {}  # by consumer group, once its runtime declared the stream


def use_consumer_group(group: str) -> None:
    """Name the durables that routers built from now on declare after `group` ("": the service's own)."""
    global _consumer_group
    _consumer_group = group


def keep_stream_order(group: str, js: JetStreamContext) -> None:
    """Make this process's consumers of `group` handle messages in stream order (infra.stream_order)."""
    STREAM_ORDER[group] = StreamOrder(js, GROUP_DURABLES.setdefault(group, {}))


def grouped(durable: str, group: str) -> str:
    return f"{durable}{GROUP_SEPARATOR}{group}" if group else durable


def group_of(durable: str) -> str:
    return durable.rsplit(GROUP_SEPARATOR, 1)[1] if GROUP_SEPARATOR in durable else ""


def consumer(
    event: type[Event],
    durable: str,
    *,
    ack_wait_s: float = 60.0,
    max_deliver: int = 30,
    batch_size: int = 4,
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    title: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Subscriber arguments for a durable pull consumer that replicas of a service share.

    `deliver_policy` applies when the consumer is created (first start); later starts resume it.
    After `max_deliver` deliveries a failing message is dead-lettered (infra.dead_letters).
    Under a consumer group (LIKENESS_CONSUMER_GROUP) the durable is `<durable>--<group>`.
    """
    title = title or f"{durable}:{event.event_type()}"
    durable = grouped(durable, _consumer_group)
    MAX_DELIVER[durable] = max_deliver
    GROUP_DURABLES.setdefault(_consumer_group, {})[durable] = event.subject
    return {
        **extra,
        "subject": event.subject,
        "stream": STREAM,
        "durable": durable,
        "pull_sub": PullSub(batch_size=batch_size, timeout=1.0),
        "config": ConsumerConfig(
            durable_name=durable,
            ack_wait=ack_wait_s,
            max_deliver=max_deliver,
            deliver_policy=deliver_policy,
        ),
        "ack_policy": AckPolicy.MANUAL,
        "title": title,
        "description": event.__doc__,
    }


SubscriberFunction = Callable[..., Awaitable[None]]


def subscribe(
    router: NatsRouter,
    event: type[Event],
    durable: str,
    **options: Any,
) -> Callable[[SubscriberFunction], object]:
    """`@subscribe(router, ShotStored, "scoring-shot-stored")`: a shared durable pull consumer."""
    return cast(Callable[[SubscriberFunction], object], router.subscriber(**consumer(event, durable, **options)))


def relay_publisher(broker: NatsBroker) -> Publish:
    """How outbox relays publish: JSON bytes, Nats-Msg-Id for dedup, waiting for the stream's ack.

    The current trace context goes along as `traceparent`, unless `headers` bring their own (an outbox row's).
    """

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await broker.publish(
            payload,
            subject,
            headers={**trace_headers(), **headers, "content-type": "application/json"},
            stream=STREAM_NAME,
            timeout=5.0,
        )

    return publish


async def publish_event(broker: NatsBroker, event: Event) -> None:
    """Publish directly (no outbox): for services that write no database row first, and progress."""
    await relay_publisher(broker)(event.subject, event.model_dump_json().encode(), {"Nats-Msg-Id": str(event.event_id)})


def stream_config(*, max_age_days: float | None = None, max_bytes: int | None = None) -> StreamConfig:
    """The stream's configuration; retention not given is read from LIKENESS_STREAM_MAX_AGE_DAYS/_MAX_BYTES."""
    if max_age_days is None or max_bytes is None:
        retention = StreamRetention()
        max_age_days = retention.max_age_days if max_age_days is None else max_age_days
        max_bytes = retention.max_bytes if max_bytes is None else max_bytes
    return dataclasses.replace(STREAM.config, max_age=max_age_days * 86400, max_bytes=max_bytes)


async def declare_stream(
    broker: NatsBroker, *, max_age_days: float | None = None, max_bytes: int | None = None
) -> None:
    """Create or update the one stream (idempotent); every service calls it before publishing."""
    js = broker.config.connection_state.stream
    config = stream_config(max_age_days=max_age_days, max_bytes=max_bytes)
    try:
        await js.add_stream(config=config, subjects=list(STREAM_SUBJECTS))
    except BadRequestError:
        await js.update_stream(config=config, subjects=list(STREAM_SUBJECTS))
    log.info("stream %s ready (max age %s s, max bytes %s)", STREAM_NAME, config.max_age, config.max_bytes)


async def settle(msg: NatsMessage, event: Event, work: Awaitable[None]) -> None:
    """Run one message's work, then ack it; on RetryLater or an error, nak it with a delay.

    At the consumer's last allowed delivery a failure raises GiveUp instead, and the dead-letter
    middleware keeps the message with its error. A redriven message meant for another consumer of
    the same subject is acked without running the work. Every log line names the event and its
    character (the correlation id).
    """
    raw = msg.raw_message
    redriven_for = (raw.headers or {}).get(REDRIVE_HEADER)
    if redriven_for is not None and redriven_for != raw.metadata.consumer:
        if inspect.iscoroutine(work):
            work.close()
        await msg.ack()
        return
    delivered = delivery_count(msg)
    consumer_name = raw.metadata.consumer or "?"
    order = STREAM_ORDER.get(group_of(consumer_name))
    if order is not None:  # a consumer group reads history: earlier messages of its other consumers go first
        await order.wait_turn(consumer_name, raw.metadata.sequence.stream, raw.in_progress)
    last = delivered >= MAX_DELIVER.get(consumer_name, delivered + 1)
    started = time.monotonic()
    context = {
        "event_id": str(event.event_id),
        "correlation_id": str(event.correlation_id),
        "event_type": event.type,
        "delivery": delivered,
    }
    try:
        await work
    except RetryLater as retry:
        mark_retried(str(retry))
        if last:
            raise GiveUp(f"still retrying after {delivered} deliveries: {retry}") from retry
        log.info("retrying later: %s", retry, extra=context)
        record_handled(consumer_name, "retried", time.monotonic() - started)
        await msg.nack(delay=retry.delay_s)
        return
    except asyncio.CancelledError:
        raise
    except Exception as error:
        mark_failed(error)
        if last:
            log.exception("handler failed on the last delivery (%d)", delivered, extra=context)
            raise GiveUp(f"{type(error).__name__}: {error}") from error
        delay = backoff_s(delivered)
        log.exception("handler failed; nak, retry in %.1f s", delay, extra=context)
        record_handled(consumer_name, "failed", time.monotonic() - started)
        await msg.nack(delay=delay)
        return
    log.debug("handled", extra=context)
    record_handled(consumer_name, "acked", time.monotonic() - started)
    await msg.ack()


def delivery_count(msg: NatsMessage) -> int:
    return int(msg.raw_message.metadata.num_delivered or 1)
