"""Trace context on real NATS JetStream and PostgreSQL: a publish, its consumer, the consumer's follow-up
through the outbox and relay, and the follow-up's consumer all land in one trace, each under its cause."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from faststream.nats import NatsMessage, NatsRouter

from contracts import Event
from infra.bus import publish_event, settle, subscribe
from infra.cli_trace import SpanLine, read_spans
from infra.runtime import Runtime
from infra.stack import StackEndpoints
from infra.tracing import start_tracing, stop_tracing, tracer
from tests.integration.test_provider_webhooks import infra_settings

pytestmark = pytest.mark.integration


class TraceStarted(Event):
    """Test-only: what the first consumer handles."""

    subject: ClassVar[str] = "likeness.test.trace_started.v1"
    type: Literal["TraceStarted"] = "TraceStarted"


class TraceFollowed(Event):
    """Test-only: what the first consumer emits through its outbox, for the second."""

    subject: ClassVar[str] = "likeness.test.trace_followed.v1"
    type: Literal["TraceFollowed"] = "TraceFollowed"


class Chain:
    """Service `first` consumes TraceStarted and emits TraceFollowed (outbox); service `second` consumes that."""

    def __init__(self, stack_endpoints: StackEndpoints, traces: Path) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.first_durable, self.second_durable = f"trace-first-{suffix}", f"trace-second-{suffix}"
        self.seen: dict[uuid.UUID, asyncio.Event] = {}
        settings = infra_settings(stack_endpoints)
        self.first = Runtime(
            f"tracefirst{suffix}", settings.model_copy(update={"trace_file": traces / "first.jsonl"}), migrations=None
        )
        self.second = Runtime(
            f"tracesecond{suffix}", settings.model_copy(update={"trace_file": traces / "second.jsonl"}), migrations=None
        )
        self.first.broker.include_router(self.first_router())
        self.second.broker.include_router(self.second_router())
        self.running = False

    async def start(self) -> None:
        for runtime in (self.first, self.second):
            await runtime.open()
            await runtime.declare_stream()
            await runtime.broker.start()
            runtime.delivery.relay.start()
        self.running = True

    async def stop(self) -> None:
        """Stop consuming, then close (which writes the spans still buffered to the trace files)."""
        if self.running:
            self.running = False
            for runtime in (self.first, self.second):
                await runtime.broker.stop()
                await runtime.close()

    def first_router(self) -> NatsRouter:
        router = NatsRouter()

        async def handle(event: TraceStarted) -> None:
            async with self.first.delivery.unit_of_work(event, self.first.delivery.consumer("started")) as work:
                if not work.already_done:
                    work.emit(TraceFollowed.follow(event))

        @subscribe(router, TraceStarted, self.first_durable)
        async def on_started(event: TraceStarted, msg: NatsMessage) -> None:
            await settle(msg, event, handle(event))

        return router

    def second_router(self) -> NatsRouter:
        router = NatsRouter()

        async def handle(event: TraceFollowed) -> None:
            self.seen.setdefault(event.correlation_id, asyncio.Event()).set()

        @subscribe(router, TraceFollowed, self.second_durable)
        async def on_followed(event: TraceFollowed, msg: NatsMessage) -> None:
            await settle(msg, event, handle(event))

        return router


@pytest.fixture
async def chain(stack_endpoints: StackEndpoints, tmp_path: Path) -> AsyncIterator[Chain]:
    chain = Chain(stack_endpoints, tmp_path)
    await chain.start()
    try:
        yield chain
    finally:
        await chain.stop()


async def test_one_trace_from_publish_through_outbox_to_the_second_consumer(chain: Chain, tmp_path: Path) -> None:
    character = uuid.uuid4()
    chain.seen[character] = asyncio.Event()
    app = start_tracing("traceapp", tmp_path / "app.jsonl")  # stands in for the gateway
    try:
        with tracer("traceapp").start_as_current_span("POST /v1/characters"):
            await publish_event(chain.first.broker, TraceStarted(correlation_id=character, tenant_id="studio-t"))
    finally:
        stop_tracing("traceapp", app)
    async with asyncio.timeout(30):
        await chain.seen[character].wait()
    await chain.stop()

    spans = read_spans(tmp_path)
    (root,) = [s for s in spans if s.name == "POST /v1/characters"]
    mine = [s for s in spans if s.attributes.get("likeness.character_id") == str(character)]
    by_name = {s.name: s for s in mine}
    first: SpanLine = by_name[f"{chain.first_durable} TraceStarted"]
    second: SpanLine = by_name[f"{chain.second_durable} TraceFollowed"]
    assert len(mine) == 2, [s.name for s in mine]
    assert {root.trace_id, first.trace_id, second.trace_id} == {root.trace_id}
    assert first.parent_span_id == root.span_id  # the direct publish carried the request's span
    assert second.parent_span_id == first.span_id  # the outbox row kept the handler's span for the relay
    assert (root.service, first.service, second.service) == ("traceapp", chain.first.service, chain.second.service)
    assert first.attributes["messaging.system"] == "nats"
    assert second.attributes["messaging.destination.name"] == TraceFollowed.subject
    assert second.attributes["likeness.tenant"] == "studio-t"
    assert first.status == second.status == "UNSET"
