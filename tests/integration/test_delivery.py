"""The delivery plumbing on real PostgreSQL and NATS JetStream: claim once, outbox, dedup on replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from faststream.nats import NatsBroker

from contracts import STREAM_NAME, CharacterRequested, ReferencesStored
from infra.bus import create_broker, declare_stream, relay_publisher
from infra.db import create_pool, migrate, migrate_service
from infra.delivery import Delivery, OutboxRelay
from infra.stack import StackEndpoints
from tests.fakes import character_requested

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(stack_endpoints: StackEndpoints) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(stack_endpoints.database_url)
    await migrate_service(pool, "delivery-test", None)
    yield pool
    await pool.close()


@pytest.fixture
async def broker(stack_endpoints: StackEndpoints) -> AsyncIterator[NatsBroker]:
    broker = create_broker(stack_endpoints.nats_url, name="delivery-test")
    await broker.connect()
    await declare_stream(broker)
    yield broker
    await broker.stop()


def follow_up(cause: CharacterRequested) -> ReferencesStored:
    return ReferencesStored.follow(
        cause, character_id=cause.character_id, strategy="lora", provider="sim", references=cause.references
    )


async def stored_copies(broker: NatsBroker, event_id: uuid.UUID, subject: str) -> int:
    """How many messages on `subject` in the stream carry this event id."""
    js = broker.config.connection_state.stream
    sub = await js.pull_subscribe(subject, stream=STREAM_NAME)
    copies = 0
    try:
        while True:
            try:
                messages = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                break
            for message in messages:
                if message.headers and message.headers.get("Nats-Msg-Id") == str(event_id):
                    copies += 1
                await message.ack()
    finally:
        await sub.unsubscribe()
    return copies


async def test_an_event_is_claimed_once_and_its_follow_up_published_once(
    pool: asyncpg.Pool, broker: NatsBroker
) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(pool, service, relay_publisher(broker))
    delivery = Delivery(pool, service, relay)
    cause = character_requested()

    async with delivery.unit_of_work(cause, "test.consumer") as work:
        assert not work.already_done
        work.emit(follow_up(cause))
    async with delivery.unit_of_work(cause, "test.consumer") as again:
        assert again.already_done  # a redelivery is recognised

    assert await relay.drain_once() == 1
    assert await relay.drain_once() == 0
    # a relay that crashed after publishing, before marking the row, publishes it again:
    await pool.execute("UPDATE messaging.outbox SET published_at=NULL WHERE service=$1", service)
    assert await relay.drain_once() == 1
    assert await stored_copies(broker, follow_up(cause).event_id, ReferencesStored.subject) == 1


async def test_a_failed_handler_leaves_no_claim_and_no_outbox_row(pool: asyncpg.Pool, broker: NatsBroker) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    delivery = Delivery(pool, service, OutboxRelay(pool, service, relay_publisher(broker)))
    cause = character_requested()

    async def failing_handler() -> None:
        async with delivery.unit_of_work(cause, "test.consumer") as work:
            work.emit(follow_up(cause))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_handler()
    assert not await delivery.is_processed(cause, "test.consumer")
    assert await pool.fetchval("SELECT count(*) FROM messaging.outbox WHERE service=$1", service) == 0


async def test_migrations_apply_once(pool: asyncpg.Pool, tmp_path: Path) -> None:
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_table.sql").write_text(f"CREATE TABLE {owner} (id int);")
    assert await migrate(pool, owner, tmp_path) == ["0001_table.sql"]
    assert await migrate(pool, owner, tmp_path) == []
    assert await pool.fetchval(f"SELECT count(*) FROM {owner}") == 0  # noqa: S608 - test-made name
