"""Poison messages: after max_deliver a message lands in messaging.dead_letters and on
likeness.deadletter.<consumer>, with its error; `likeness dlq` lists, shows, redrives and drops it."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar, Literal

import nats
import pytest
from faststream.nats import NatsMessage, NatsRouter
from typer.testing import CliRunner, Result

from contracts import Event, MessageDeadLettered
from infra.bus import publish_event, settle, subscribe
from infra.cli import app as cli
from infra.dead_letters import PostgresDeadLetters
from infra.metrics import exposition
from infra.runtime import Runtime
from infra.stack import StackEndpoints
from tests.integration.test_provider_webhooks import infra_settings

pytestmark = pytest.mark.integration

MAX_DELIVER = 3


class ProbeHappened(Event):
    """A test-only event on its own subject, so no other consumer meets the poison published here."""

    subject: ClassVar[str] = "likeness.test.probe_happened.v1"
    type: Literal["ProbeHappened"] = "ProbeHappened"
    note: str


class Probe:
    """Two consumers of one subject: `main` fails on notes it is told to; `bystander` just counts."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.main = f"dlq-test-main-{suffix}"
        self.bystander = f"dlq-test-bystander-{suffix}"
        self.failing: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        self.bystander_seen: Counter[str] = Counter()

    def router(self) -> NatsRouter:
        router = NatsRouter()

        async def work(event: ProbeHappened) -> None:
            self.calls[event.note] += 1
            if event.note in self.failing:
                raise ValueError(f"cannot handle {event.note}")
            self.done[event.note] += 1

        async def look(event: ProbeHappened) -> None:
            self.bystander_seen[event.note] += 1

        @subscribe(router, ProbeHappened, self.main, max_deliver=MAX_DELIVER)
        async def on_probe(event: ProbeHappened, msg: NatsMessage) -> None:
            await settle(msg, event, work(event))

        @subscribe(router, ProbeHappened, self.bystander, max_deliver=MAX_DELIVER)
        async def on_probe_too(event: ProbeHappened, msg: NatsMessage) -> None:
            await settle(msg, event, look(event))

        return router


@pytest.fixture
async def running(stack_endpoints: StackEndpoints) -> AsyncIterator[tuple[Runtime, Probe]]:
    probe = Probe()
    runtime = Runtime("dlqtest", infra_settings(stack_endpoints), migrations=None)
    runtime.broker.include_router(probe.router())
    await runtime.open()
    await runtime.declare_stream()
    await runtime.broker.start()
    try:
        yield runtime, probe
    finally:
        await runtime.broker.stop()
        await runtime.close()


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110 - polling a database and a counter
            await asyncio.sleep(0.1)


def probe_event(note: str) -> ProbeHappened:
    return ProbeHappened(correlation_id=uuid.uuid4(), tenant_id="studio-dlq", note=note)


async def test_failing_and_poison_messages_are_dead_lettered_then_redriven(
    running: tuple[Runtime, Probe], stack_endpoints: StackEndpoints
) -> None:
    runtime, probe = running
    letters = PostgresDeadLetters(runtime.pool)
    connection = await nats.connect(stack_endpoints.nats_url)
    js = connection.jetstream()
    announced = await js.subscribe(MessageDeadLettered.subject, ordered_consumer=True)
    try:
        probe.failing.add("bad")
        bad = probe_event("bad")
        await publish_event(runtime.broker, bad)
        await publish_event(runtime.broker, probe_event("good"))
        # a poison message: not a ProbeHappened at all
        await js.publish(ProbeHappened.subject, b'{"note": 7, "oops": true}', headers={"Nats-Msg-Id": uuid.uuid4().hex})

        async def two_kept() -> bool:
            return len(await letters.list(consumer=probe.main)) >= 2

        await wait_for(two_kept)
        main_letters = await letters.list(consumer=probe.main)
        assert len(main_letters) == 2, main_letters
        by_event = {letter.event_id: letter for letter in main_letters}
        failed = by_event[bad.event_id]
        assert failed.deliveries == MAX_DELIVER
        assert "cannot handle bad" in failed.error
        assert failed.correlation_id == bad.correlation_id
        assert failed.tenant_id == "studio-dlq"
        poison = by_event[None]
        assert "ValidationError" in poison.error
        assert poison.payload == b'{"note": 7, "oops": true}'
        assert probe.calls["bad"] == MAX_DELIVER  # handled exactly max_deliver times, then left alone
        assert probe.done["good"] == 1
        # the bystander consumer read the same ProbeHappened events and has its own record of the poison
        assert len(await letters.list(consumer=probe.bystander)) == 1
        notices: list[MessageDeadLettered] = []
        async with asyncio.timeout(10):
            while len(notices) < 2:
                notice = MessageDeadLettered.model_validate_json((await announced.next_msg(timeout=5)).data)
                if notice.consumer == probe.main:
                    notices.append(notice)
        assert {n.message_event_id for n in notices} == {bad.event_id, None}
        assert {n.dead_letter_id for n in notices} == {failed.id, poison.id}
        unreadable = next(n for n in notices if n.message_event_id is None)
        assert unreadable.tenant_id == "_unreadable"
        assert all(n.deliveries == MAX_DELIVER for n in notices)
        await asyncio.sleep(2.0)  # terminated: no delivery after the last
        assert probe.calls["bad"] == MAX_DELIVER
        metrics = exposition()[0].decode()
        counted = rf'likeness_messages_total{{consumer="{probe.main}",outcome="(\w+)"[^}}]*}} (\S+)'
        assert dict(re.findall(counted, metrics)) == {"dead_lettered": "2.0", "acked": "1.0", "failed": "4.0"}

        runner = CliRunner()

        async def likeness(*args: str) -> Result:  # the CLI runs its own event loop: give it a thread
            return await asyncio.to_thread(runner.invoke, cli, list(args))

        urls = ["--database-url", stack_endpoints.database_url]
        listed = await likeness("dlq", "list", "--consumer", probe.main, *urls)
        assert listed.exit_code == 0, listed.output
        assert str(failed.id) in listed.output
        assert "cannot handle bad" in listed.output
        shown = await likeness("dlq", "show", str(failed.id), *urls)
        assert shown.exit_code == 0, shown.output
        assert str(bad.event_id) in shown.output
        assert '"note": "bad"' in shown.output

        # the cause is fixed; redrive: the failing consumer handles it, the bystander does not see it again
        probe.failing.clear()
        seen_before = probe.bystander_seen["bad"]
        redriven = await likeness("dlq", "redrive", str(failed.id), *urls, "--nats-url", stack_endpoints.nats_url)
        assert redriven.exit_code == 0, redriven.output

        async def handled() -> bool:
            return probe.done["bad"] == 1

        await wait_for(handled)
        await asyncio.sleep(1.0)
        assert probe.done["bad"] == 1
        assert probe.bystander_seen["bad"] == seen_before
        again = await letters.get(failed.id)
        assert again is not None
        assert again.state == "redriven"
        assert again.redrive_count == 1

        dropped = await likeness("dlq", "drop", str(poison.id), *urls)
        assert dropped.exit_code == 0, dropped.output
        assert [letter.id for letter in await letters.list(consumer=probe.main)] == []
        assert {letter.state for letter in await letters.list(consumer=probe.main, every=True)} == {
            "redriven",
            "dropped",
        }
        missing = await likeness("dlq", "show", "999999999", *urls)
        assert missing.exit_code == 1
        assert "no dead letter 999999999" in missing.output
    finally:
        await connection.close()
