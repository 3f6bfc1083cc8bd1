"""Every Prometheus metric Likeness exposes, defined once, in one registry per process (prefix `likeness_`).

Services record through the small functions below, never through prometheus_client directly, so a
metric's name, labels and buckets live only here. `/metrics` (infra/observability.py on the worker
services, the gateway's own route) serves `exposition()`.

A worker's `service` label comes from `bind_service`, which `worker_app` calls in its lifespan: the
value is kept in a context variable (tasks started from there inherit it, so services sharing one
process in tests keep their own) and as the process default.
"""

from __future__ import annotations

import contextlib
import logging
from contextvars import ContextVar
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger(__name__)

REGISTRY: Final = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# What became of one consumed message (settle() in infra/bus.py decides).
ACKED: Final = "acked"
RETRIED: Final = "retried"
FAILED: Final = "failed"
DEAD_LETTERED: Final = "dead_lettered"
MESSAGE_OUTCOMES: Final = frozenset({ACKED, RETRIED, FAILED, DEAD_LETTERED})

# How one logical provider call ended (ProviderHttp.call, retries included).
PROVIDER_OUTCOMES: Final = frozenset({"ok", "rate_limited", "transient", "refused", "timeout"})

# Handlers run from milliseconds (a row) to minutes (a provider job).
_HANDLER_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_CALL_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SCORING_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_HTTP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

MESSAGES: Final = Counter(
    "likeness_messages",
    "Consumed messages by service, durable consumer and outcome (acked, retried, failed, dead_lettered).",
    ["service", "consumer", "outcome"],
    registry=REGISTRY,
)
HANDLER_SECONDS: Final = Histogram(
    "likeness_handler_seconds",
    "Time one message's work took, by service and durable consumer, whatever its outcome.",
    ["service", "consumer"],
    buckets=_HANDLER_BUCKETS,
    registry=REGISTRY,
)
CONSUMER_LAG: Final = Gauge(
    "likeness_consumer_lag",
    "Messages in the stream not yet delivered to this durable consumer (JetStream num_pending), read at scrape time.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_ACK_PENDING: Final = Gauge(
    "likeness_consumer_ack_pending",
    "Messages delivered to this durable consumer and not yet acked (JetStream num_ack_pending), read at scrape time.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
PROVIDER_CALLS: Final = Counter(
    "likeness_provider_calls",
    "Logical HTTP calls to a provider (in-call retries included) by outcome: ok, rate_limited, transient, "
    "refused, timeout.",
    ["provider", "outcome"],
    registry=REGISTRY,
)
PROVIDER_CALL_SECONDS: Final = Histogram(
    "likeness_provider_call_seconds",
    "Duration of one logical provider call, in-call retries included.",
    ["provider"],
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
PROVIDER_COST: Final = Counter(
    "likeness_provider_cost_usd",
    "What providers charged (as they report it or as priced in settings), counted once when storage records "
    "a new shot or identity. Simulated providers count their simulated prices.",
    ["provider"],
    registry=REGISTRY,
)
SCORING_SECONDS: Final = Histogram(
    "likeness_scoring_seconds",
    "Time to score one shot: loading its images and reference embeddings, waiting for its batch, the models.",
    buckets=_SCORING_BUCKETS,
    registry=REGISTRY,
)
HTTP_REQUESTS: Final = Counter(
    "likeness_http_requests",
    "Gateway HTTP requests by route template, method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS: Final = Histogram(
    "likeness_http_request_seconds",
    "Gateway time to the response's start (headers), by route template and method.",
    ["route", "method"],
    buckets=_HTTP_BUCKETS,
    registry=REGISTRY,
)
REGENERATIONS: Final = Counter(
    "likeness_regenerations",
    "Retakes the consistency gate asked for, by the provider to make them and why: regenerate (the shot's own "
    "provider, a new seed) or fallback. Counted by storage once each is recorded.",
    ["provider", "reason"],
    registry=REGISTRY,
)
# A provider's circuit breaker in this process (services/provider_adapter/breaker.py): replicas keep their own.
BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
BREAKER_STATE: Final = Gauge(
    "likeness_breaker_state",
    "Each provider's circuit breaker in this provider adapter process: 0 closed, 1 half-open, 2 open.",
    ["provider"],
    registry=REGISTRY,
)
BREAKER_REROUTED: Final = Counter(
    "likeness_breaker_rerouted",
    "New shots sent to a fallback provider (or held back) because their provider's breaker was open.",
    ["provider", "to"],
    registry=REGISTRY,
)

_UNBOUND: Final = "unknown"
_process_service = _UNBOUND
_service: ContextVar[str | None] = ContextVar("likeness_metrics_service", default=None)


def bind_service(service: str) -> None:
    """Label what this task (and the tasks it starts) records with `service`; also the process default."""
    global _process_service
    _process_service = service
    _service.set(service)


def current_service() -> str:
    return _service.get() or _process_service


def record_handled(consumer: str, outcome: str, seconds: float) -> None:
    """One consumed message: `consumer` is its durable, `outcome` one of MESSAGE_OUTCOMES, `seconds` its work.

    Never raises for a bad label (a metric must not break message handling): an unknown outcome is
    counted as such and logged.
    """
    if outcome not in MESSAGE_OUTCOMES:
        log.warning("record_handled: unknown outcome %r for %s", outcome, consumer)
    service = current_service()
    MESSAGES.labels(service=service, consumer=consumer, outcome=outcome).inc()
    HANDLER_SECONDS.labels(service=service, consumer=consumer).observe(max(0.0, seconds))


def record_consumer_state(stream: str, consumer: str, *, pending: int, ack_pending: int) -> None:
    CONSUMER_LAG.labels(stream=stream, consumer=consumer).set(pending)
    CONSUMER_ACK_PENDING.labels(stream=stream, consumer=consumer).set(ack_pending)


def forget_consumer(stream: str, consumer: str) -> None:
    """A consumer that no longer exists: drop its gauges rather than show a stale figure."""
    for gauge in (CONSUMER_LAG, CONSUMER_ACK_PENDING):
        with contextlib.suppress(KeyError):
            gauge.remove(stream, consumer)


def record_provider_call(provider: str, outcome: str, seconds: float) -> None:
    PROVIDER_CALLS.labels(provider=provider, outcome=outcome).inc()
    PROVIDER_CALL_SECONDS.labels(provider=provider).observe(max(0.0, seconds))


def record_provider_cost(provider: str, usd: float) -> None:
    if usd > 0:
        PROVIDER_COST.labels(provider=provider).inc(usd)
    else:
        PROVIDER_COST.labels(provider=provider)  # shows the provider at 0 rather than not at all


def record_regeneration(provider: str, reason: str) -> None:
    REGENERATIONS.labels(provider=provider, reason=reason).inc()


def record_breaker_state(provider: str, state: str) -> None:
    BREAKER_STATE.labels(provider=provider).set(BREAKER_STATES[state])


def record_breaker_reroute(provider: str, to: str) -> None:
    """`to`: the fallback provider, or "waiting" when there is none and the shot waits out the cool-down."""
    BREAKER_REROUTED.labels(provider=provider, to=to).inc()


def record_scoring(seconds: float) -> None:
    SCORING_SECONDS.observe(max(0.0, seconds))


def record_http(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(route=route, method=method).observe(max(0.0, seconds))


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
