"""Trace context across services (OpenTelemetry): one character's path, followed from span to span.

Every publish carries the W3C `traceparent` (and `tracestate`) of the span current at that moment as
NATS headers (`infra.bus.relay_publisher`). Events a handler emits go through the outbox, published later
by the relay from another task, so `infra.delivery.add_to_outbox` stores the handler's trace headers with
each row and the relay sends those. Every consumed message runs inside a CONSUMER span (`ConsumerSpans`,
a broker middleware) whose parent is the publisher's span, so a request's trace runs gateway -> storage ->
provider_adapter -> storage -> scoring -> storage, one trace id throughout.

Each service has a `TracerProvider` (resource `service.name=likeness-<service>`). With a trace file
(`LIKENESS_TRACE_FILE`; `likeness up` and the demo give each service `<data dir>/traces/<service>.jsonl`)
finished spans are appended to it as JSON lines by a batch processor; without one nothing is exported,
but ids are still made and propagated, so log lines and downstream services still share the trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from contextvars import Token
from pathlib import Path
from typing import Any

from faststream import BaseMiddleware
from faststream._internal.context.repository import ContextRepo
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent / tracestate, nothing else
TRACER_NAME = "likeness"
# how often the batch processor appends finished spans to the trace file
EXPORT_EVERY_MS = 1000

_providers: dict[str, TracerProvider] = {}


def trace_headers() -> dict[str, str]:
    """The current span's W3C trace headers (`traceparent`, `tracestate`); empty when no span is current."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier


def context_from(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context a message's headers carry (an empty context when they carry none)."""
    return PROPAGATOR.extract(dict(headers or {}))


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One line of a trace file."""
    ctx = span.get_span_context()
    parent = span.parent
    start, end = span.start_time or 0, span.end_time or span.start_time or 0
    return {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "service": str(span.resource.attributes.get("service.name", "?")),
        "name": span.name,
        "kind": span.kind.name,
        "start_unix_nano": start,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name,
        "error": span.status.description,
        "attributes": dict(span.attributes or {}),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to `path`, one JSON object per line (one write per batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), default=str) + "\n" for span in spans)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError:
            log.warning("could not append %d spans to %s", len(spans), self.path, exc_info=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def start_tracing(service: str, trace_file: Path | None = None) -> TracerProvider:
    """`service`'s tracer provider, exporting to `trace_file` when given; `tracer(service)` makes its spans.

    It is not made OpenTelemetry's global provider (several services share a process in tests). To send spans
    elsewhere (an OpenTelemetry collector), add a processor to the returned provider, e.g.
    `provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))` from opentelemetry-exporter-otlp.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": f"likeness-{service}"}))
    if trace_file is not None:
        provider.add_span_processor(
            BatchSpanProcessor(JsonLinesSpanExporter(trace_file), schedule_delay_millis=EXPORT_EVERY_MS)
        )
    _providers[service] = provider
    return provider


def stop_tracing(service: str, provider: TracerProvider) -> None:
    """Write what is still buffered, then stop `provider`."""
    if _providers.get(service) is provider:
        del _providers[service]
    provider.shutdown()


def tracer(service: str) -> Tracer:
    """The tracer of `service`'s provider in this process; OpenTelemetry's global one (a no-op unless an
    embedding program sets one) before `start_tracing`: context then still passes through unchanged."""
    provider = _providers.get(service)
    return provider.get_tracer(TRACER_NAME) if provider is not None else trace.get_tracer(TRACER_NAME)


def mark_failed(error: BaseException) -> None:
    """Record `error` on the current span (a handler failure that `settle` catches and naks)."""
    span = trace.get_current_span()
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def mark_retried(reason: str) -> None:
    """Note on the current span that its message will come back (`RetryLater`): not an error."""
    trace.get_current_span().set_attributes({"likeness.outcome": "retried", "likeness.retry_reason": reason[:500]})


def _envelope(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _consumer_of(msg: Msg) -> tuple[str | None, int | None]:
    try:
        return msg.metadata.consumer, msg.metadata.num_delivered
    except Exception:  # not a JetStream message
        return None, None


class ConsumerSpans:
    """Broker middleware factory: each consumed message is handled inside a CONSUMER span of `service`,
    child of the span that published it (its `traceparent` header)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _ConsumerSpan:
        return _ConsumerSpan(msg, context=context, service=self.service)


class _ConsumerSpan(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, service: str) -> None:
        super().__init__(msg, context=context)
        self.service = service
        self.span: Span | None = None
        self.token: Token[otel_context.Context] | None = None

    async def on_receive(self) -> None:
        if not isinstance(self.msg, Msg):
            return
        body = _envelope(self.msg.data)
        consumer, delivered = _consumer_of(self.msg)
        event_type = body.get("type") or "?"
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": self.msg.subject,
            "messaging.consumer.group.name": consumer or "",
            "likeness.event_type": str(event_type),
            "likeness.event_id": str(body.get("event_id", "")),
            "likeness.character_id": str(body.get("correlation_id", "")),
            "likeness.tenant": str(body.get("tenant_id", "")),
            "likeness.delivery": delivered or 1,
        }
        self.span = tracer(self.service).start_span(
            f"{consumer or self.msg.subject} {event_type}",
            context=context_from(self.msg.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        self.token = otel_context.attach(trace.set_span_in_context(self.span))

    async def after_processed(
        self, exc_type: type[BaseException] | None = None, exc_val: BaseException | None = None, exc_tb: Any = None
    ) -> bool | None:
        if self.span is None:
            return False
        if exc_val is not None:
            self.span.record_exception(exc_val)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        if self.token is not None:
            otel_context.detach(self.token)
        self.span.end()
        return False
