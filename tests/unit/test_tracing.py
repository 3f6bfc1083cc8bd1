"""Trace context: carried in publish headers, stored with outbox rows, picked up by the consumer's span."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import asyncpg
import pytest
from faststream._internal.context.repository import ContextRepo
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from typer.testing import CliRunner

from contracts import Event
from infra.bus import RetryLater, publish_event, relay_publisher, settle
from infra.cli import app as cli
from infra.db import DbConnection
from infra.delivery import OutboxRelay, add_to_outbox
from infra.logs import JsonFormatter
from infra.tracing import ConsumerSpans, context_from, start_tracing, stop_tracing, trace_headers, tracer


class TraceProbed(Event):
    """A test-only event."""

    subject: ClassVar[str] = "likeness.test.trace_probed.v1"
    type: Literal["TraceProbed"] = "TraceProbed"
    note: str = ""


@pytest.fixture
def spans() -> Iterator[tuple[str, InMemorySpanExporter]]:
    """A service of its own (random name) whose finished spans are kept in memory."""
    service = f"unit-{uuid.uuid4().hex[:8]}"
    provider = start_tracing(service)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield service, exporter
    stop_tracing(service, provider)


def hex_ids(span: trace.Span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def named_by(headers: dict[str, str]) -> tuple[str, str]:
    """The trace id and parent span id a W3C traceparent header names (version-trace-span-flags)."""
    version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id


def test_no_span_no_headers() -> None:
    assert trace_headers() == {}
    assert not trace.get_current_span(context_from({})).get_span_context().is_valid


def test_headers_carry_the_current_span_and_come_back_as_its_context(spans: tuple[str, Any]) -> None:
    service, _ = spans
    with tracer(service).start_as_current_span("request") as span:
        headers = trace_headers()
    assert named_by(headers) == hex_ids(span)
    remote = trace.get_current_span(context_from(headers)).get_span_context()
    assert (remote.trace_id, remote.span_id, remote.is_remote) == (
        span.get_span_context().trace_id,
        span.get_span_context().span_id,
        True,
    )


class PublishingBroker:
    """Stands in for NatsBroker.publish: keeps what was published, with its headers."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(self, payload: bytes, subject: str, *, headers: dict[str, str], **_: Any) -> None:
        self.published.append((subject, payload, headers))


def probe(note: str = "") -> TraceProbed:
    return TraceProbed(correlation_id=uuid.uuid4(), tenant_id="studio-trace", note=note)


async def test_a_direct_publish_carries_the_current_trace(spans: tuple[str, Any]) -> None:
    service, _ = spans
    broker = PublishingBroker()
    event = probe()
    with tracer(service).start_as_current_span("POST /v1/characters") as span:
        await publish_event(cast(NatsBroker, broker), event)
    ((_, _, headers),) = broker.published
    assert headers["Nats-Msg-Id"] == str(event.event_id)
    assert named_by(headers) == hex_ids(span)


async def test_headers_given_to_the_publisher_win_over_the_current_span(spans: tuple[str, Any]) -> None:
    service, _ = spans
    broker = PublishingBroker()
    stored = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracer(service).start_as_current_span("relay"):
        await relay_publisher(cast(NatsBroker, broker))("s", b"{}", {"traceparent": stored, "Nats-Msg-Id": "x"})
    assert broker.published[0][2]["traceparent"] == stored


class OutboxConnection:
    """Stands in for the connection and pool the outbox uses: rows written, rows the relay reads back."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def executemany(self, query: str, args: list[tuple[Any, ...]]) -> None:
        assert "headers" in query
        for event_id, _service, subject, payload, headers in args:
            self.rows.append(
                {
                    "seq": len(self.rows) + 1,
                    "event_id": event_id,
                    "subject": subject,
                    "payload": payload,
                    "headers": headers,
                }
            )

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return list(self.rows)

    async def execute(self, query: str, *args: Any) -> None:
        self.rows.clear()  # marked published

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[OutboxConnection]:
        yield self


async def test_outbox_rows_keep_the_handlers_trace_and_the_relay_sends_it(spans: tuple[str, Any]) -> None:
    service, _ = spans
    conn = OutboxConnection()
    first, second = probe("a"), probe("b")
    with tracer(service).start_as_current_span("storage-character-requested CharacterRequested") as span:
        await add_to_outbox(cast(DbConnection, conn), service, [first, second])
    stored = [json.loads(row["headers"]) for row in conn.rows]
    assert [named_by(headers) for headers in stored] == [hex_ids(span), hex_ids(span)]
    expected = stored[0]["traceparent"]

    published: list[tuple[str, dict[str, str]]] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        published.append((subject, headers))

    relay = OutboxRelay(cast(asyncpg.Pool, conn), service, publish)
    assert await relay.drain_once() == 2  # outside any span: the stored context is what goes out
    assert published == [
        (TraceProbed.subject, {"traceparent": expected, "Nats-Msg-Id": str(first.event_id)}),
        (TraceProbed.subject, {"traceparent": expected, "Nats-Msg-Id": str(second.event_id)}),
    ]


def jetstream_message(event: Event, headers: dict[str, str], consumer: str = "storage-probe") -> Msg:
    reply = f"$JS.ACK.LIKENESS.{consumer}.2.17.9.1763990000000000000.0"
    return Msg(
        _client=cast(Any, None),
        subject=event.subject,
        reply=reply,
        data=event.model_dump_json().encode(),
        headers=headers,
    )


async def test_a_consumed_message_is_handled_in_a_consumer_span_under_the_publishers(
    spans: tuple[str, InMemorySpanExporter],
) -> None:
    service, exporter = spans
    with tracer(service).start_as_current_span("publisher") as publisher:
        headers = trace_headers()
    event = probe("consumed")
    middleware = ConsumerSpans(service)(jetstream_message(event, headers), context=ContextRepo())
    async with middleware:
        inside = trace.get_current_span()
        forwarded = trace_headers()  # what a follow-up published or outboxed here carries
    assert not trace.get_current_span().get_span_context().is_valid  # detached afterwards
    consumer_span = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER)
    assert consumer_span.name == "storage-probe TraceProbed"
    assert consumer_span.parent is not None
    assert consumer_span.parent.span_id == publisher.get_span_context().span_id
    assert consumer_span.context is not None
    assert consumer_span.context.trace_id == publisher.get_span_context().trace_id
    assert inside.get_span_context().span_id == consumer_span.context.span_id
    assert named_by(forwarded)[1] == f"{consumer_span.context.span_id:016x}"
    assert dict(consumer_span.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": TraceProbed.subject,
        "messaging.consumer.group.name": "storage-probe",
        "likeness.event_type": "TraceProbed",
        "likeness.event_id": str(event.event_id),
        "likeness.character_id": str(event.correlation_id),
        "likeness.tenant": "studio-trace",
        "likeness.delivery": 2,
    }


async def test_a_message_without_trace_headers_starts_a_trace_and_a_failure_marks_the_span(
    spans: tuple[str, InMemorySpanExporter],
) -> None:
    service, exporter = spans
    middleware = ConsumerSpans(service)(jetstream_message(probe(), {}), context=ContextRepo())
    await middleware.__aenter__()
    await middleware.__aexit__(ValueError, ValueError("cannot handle"), None)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert "cannot handle" in (span.status.description or "")


def test_log_lines_name_the_current_span(spans: tuple[str, Any]) -> None:
    service, _ = spans
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)
    assert "trace_id" not in json.loads(JsonFormatter("storage").format(record))
    with tracer(service).start_as_current_span("work") as span:
        line = json.loads(JsonFormatter("storage").format(record))
    assert (line["trace_id"], line["span_id"]) == hex_ids(span)


async def test_trace_file_lines_and_the_trace_command(tmp_path: Path) -> None:
    """Spans written by two services' files come back as one tree for the character they touched."""
    character = uuid.uuid4()
    gateway = start_tracing("gateway-unit", tmp_path / "traces" / "gateway.jsonl")
    storage = start_tracing("storage-unit", tmp_path / "traces" / "storage.jsonl")
    try:
        with tracer("gateway-unit").start_as_current_span("POST /v1/characters", kind=SpanKind.SERVER):
            headers = trace_headers()
        event = TraceProbed(correlation_id=character, tenant_id="studio-trace")
        middleware = ConsumerSpans("storage-unit")(
            jetstream_message(event, headers, "storage-probe"), context=ContextRepo()
        )
        async with middleware:
            pass
        # an app polling the character: shown with --reads only
        with tracer("gateway-unit").start_as_current_span(
            "GET /v1/characters/{character_id}",
            kind=SpanKind.SERVER,
            attributes={"likeness.character_id": str(character)},
        ):
            pass
        # another character's trace is left out
        with tracer("storage-unit").start_as_current_span("other", attributes={"likeness.character_id": "x"}):
            pass
    finally:
        stop_tracing("gateway-unit", gateway)
        stop_tracing("storage-unit", storage)
    lines = [json.loads(line) for line in (tmp_path / "traces" / "storage.jsonl").read_text().splitlines()]
    assert {line["name"] for line in lines} == {"storage-probe TraceProbed", "other"}
    consumed = next(line for line in lines if line["name"] == "storage-probe TraceProbed")
    assert set(consumed) >= {"trace_id", "span_id", "parent_span_id", "service", "start_unix_nano", "duration_ms"}
    assert consumed["service"] == "likeness-storage-unit"
    assert consumed["kind"] == "CONSUMER"

    result = CliRunner().invoke(cli, ["trace", str(character), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert out[0].startswith(f"trace {consumed['trace_id']}: 2 spans, ")
    assert out[0].endswith(" ms, gateway-unit, storage-unit")
    assert out[1].split()[4:] == ["gateway-unit", "POST", "/v1/characters"]
    assert out[2].split()[4:] == ["storage-unit", "storage-probe", "TraceProbed"]
    assert out[2].index("storage-probe") > out[1].index("POST")  # indented under its parent
    assert "other" not in result.output
    assert "GET" not in result.output
    with_reads = CliRunner().invoke(cli, ["trace", str(character), "--data-dir", str(tmp_path), "--reads"])
    assert "GET /v1/characters/{character_id}" in with_reads.output

    missing = CliRunner().invoke(cli, ["trace", str(uuid.uuid4()), "--data-dir", str(tmp_path)])
    assert missing.exit_code == 2
    assert "no span" in missing.output


def test_a_provider_without_a_file_still_gives_ids() -> None:
    provider = start_tracing("no-file-unit")
    try:
        assert isinstance(provider, TracerProvider)
        with tracer("no-file-unit").start_as_current_span("work"):
            assert "traceparent" in trace_headers()
    finally:
        stop_tracing("no-file-unit", provider)


class SettledMessage:
    """Stands in for NatsMessage in `settle`: the raw JetStream message, and what was done with it."""

    def __init__(self, raw: Msg) -> None:
        self.raw_message = raw
        self.done: list[str] = []

    async def ack(self) -> None:
        self.done.append("ack")

    async def nack(self, delay: float | None = None) -> None:
        self.done.append("nack")


async def test_retries_and_failures_show_on_the_consumer_span(spans: tuple[str, InMemorySpanExporter]) -> None:
    service, exporter = spans

    async def retry() -> None:
        raise RetryLater("identity not ready")

    async def fail() -> None:
        raise ValueError("broken image")

    for work in (retry, fail):
        event = probe(work.__name__)
        raw = jetstream_message(event, {}, consumer=f"unit-{work.__name__}")
        message = SettledMessage(raw)
        async with ConsumerSpans(service)(raw, context=ContextRepo()):
            await settle(cast(NatsMessage, message), event, work())
        assert message.done == ["nack"]
    retried, failed = exporter.get_finished_spans()
    assert dict(retried.attributes or {})["likeness.outcome"] == "retried"
    assert retried.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: broken image"
