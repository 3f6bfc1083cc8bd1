"""Exactly-once effects on top of at-least-once delivery.

Every consumed event runs in one PostgreSQL transaction that (1) claims the event in
`messaging.processed_events`, (2) changes the service's own tables and (3) writes the
events it causes to `messaging.outbox`. The subscriber acks the message only after that
commit. A relay publishes outbox rows to JetStream with `Nats-Msg-Id` = event id, so a
crash anywhere loses nothing and a redelivery changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from contracts import Event
from infra.db import DbConnection
from infra.tracing import trace_headers

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]


@dataclass
class Work:
    """One message's transaction. `already_done` is True when this consumer saw the event before."""

    conn: DbConnection
    already_done: bool
    emitted: list[Event] = field(default_factory=list)

    def emit(self, *events: Event) -> None:
        self.emitted.extend(events)


async def is_processed(pool: asyncpg.Pool, consumer: str, event_id: UUID) -> bool:
    """Cheap pre-check before expensive work (scoring, provider calls); `unit_of_work` decides."""
    found = await pool.fetchval(
        "SELECT 1 FROM messaging.processed_events WHERE consumer=$1 AND event_id=$2", consumer, event_id
    )
    return found is not None


async def add_to_outbox(conn: DbConnection, service: str, events: list[Event]) -> None:
    """Write `events` to the outbox with the current trace context (`traceparent`), which the relay sends."""
    if not events:
        return
    headers = json.dumps(trace_headers())
    await conn.executemany(
        """INSERT INTO messaging.outbox (event_id, service, subject, payload, headers)
           VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb) ON CONFLICT (event_id) DO NOTHING""",
        [(e.event_id, service, e.subject, e.model_dump_json(), headers) for e in events],
    )


class OutboxRelay:
    """Publishes a service's committed outbox rows, in order, then marks them published.

    Replicas share the table safely: rows are locked with SKIP LOCKED while being published.
    With `discard` (LIKENESS_OUTBOX_MODE=discard) rows are marked published without being sent: an instance
    rebuilding its records from the stream's history does not announce that history a second time.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        service: str,
        publish: Publish,
        *,
        idle_poll_s: float = 0.5,
        discard: bool = False,
    ) -> None:
        self._pool = pool
        self._service = service
        self._publish = publish
        self._idle_poll_s = idle_poll_s
        self._discard = discard
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def drain_once(self, limit: int = 100) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT seq, event_id, subject, payload::text AS payload, headers::text AS headers
                   FROM messaging.outbox
                   WHERE service=$1 AND published_at IS NULL
                   ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED""",
                self._service,
                limit,
            )
            for row in [] if self._discard else rows:
                headers = {**json.loads(row["headers"]), "Nats-Msg-Id": str(row["event_id"])}  # trace headers
                await self._publish(row["subject"], row["payload"].encode(), headers)
            if rows:
                await conn.execute(
                    "UPDATE messaging.outbox SET published_at=now() WHERE seq = ANY($1::bigint[])",
                    [row["seq"] for row in rows],
                )
        return len(rows)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                published = await self.drain_once()
            except Exception:  # the bus or the database is away: keep the rows, try again shortly
                log.exception("outbox relay for %s failed; retrying", self._service)
                published = 0
                await asyncio.sleep(1.0)
            if published == 0 and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._idle_poll_s)
        # one last pass so a clean shutdown leaves nothing behind that it could have sent
        with contextlib.suppress(Exception):
            await self.drain_once()


class Delivery:
    """What a service's subscribers use to process one message exactly once."""

    def __init__(self, pool: asyncpg.Pool, service: str, relay: OutboxRelay, *, group: str = "") -> None:
        self.pool = pool
        self.service = service
        self.relay = relay
        self.group = group

    def consumer(self, name: str) -> str:
        """The claim key in messaging.processed_events; a consumer group (LIKENESS_CONSUMER_GROUP) has its own
        claims, so its consumers process again what the service's own consumers already did."""
        return f"{self.service}.{name}--{self.group}" if self.group else f"{self.service}.{name}"

    @contextlib.asynccontextmanager
    async def unit_of_work(self, event: Event, consumer: str) -> AsyncIterator[Work]:
        """Claim `event` for `consumer`, yield the transaction, then outbox what was emitted and commit."""
        async with self.pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetchval(
                """INSERT INTO messaging.processed_events (consumer, event_id) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING RETURNING true""",
                consumer,
                event.event_id,
            )
            work = Work(conn=conn, already_done=claimed is None)
            yield work
            if work.already_done and work.emitted:
                raise RuntimeError("a handler emitted events for an event it had already processed")
            await add_to_outbox(conn, self.service, work.emitted)
        if work.emitted:
            self.relay.wake()

    async def is_processed(self, event: Event, consumer: str) -> bool:
        return await is_processed(self.pool, consumer, event.event_id)
