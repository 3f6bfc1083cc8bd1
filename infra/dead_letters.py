"""Dead letters: messages a consumer gave up on, kept with their error until an operator acts.

Every worker's broker runs `DeadLetterMiddleware` around each message. A message whose handling
raises (a handler error, or a payload that is not the event it should be: a poison message) is
nak'ed with a backoff while deliveries remain; at the consumer's last allowed delivery
(`max_deliver`) it is written to `messaging.dead_letters` with its error, announced as
`MessageDeadLettered` (`likeness.message.dead_lettered.v1`), and terminated, so JetStream stops
redelivering it and nothing is lost silently. `likeness dlq` lists, shows, redrives (publishes the
stored message again, for that one consumer) and drops them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from faststream import BaseMiddleware
from faststream._internal.context.repository import ContextRepo
from nats.aio.msg import Msg

from contracts import MessageDeadLettered
from infra.delivery import Publish
from infra.logs import bind_message_ids
from infra.metrics import record_handled
from infra.tracing import mark_failed

log = logging.getLogger(__name__)

# A redriven message carries the consumer it is meant for; every other consumer of its subject acks it unseen.
REDRIVE_HEADER = "Likeness-Redrive-For"

# max_deliver of every durable consumer this process declared (infra.bus.consumer fills it in)
MAX_DELIVER: dict[str, int] = {}


class GiveUp(Exception):
    """Raised by `settle` at a message's last allowed delivery: the middleware dead-letters it."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    service: str
    consumer: str
    subject: str
    stream_seq: int
    event_id: UUID | None
    correlation_id: UUID | None
    tenant_id: str | None
    payload: bytes
    headers: dict[str, str]
    error: str
    deliveries: int
    dead_at: datetime
    redriven_at: datetime | None
    redrive_count: int
    dropped_at: datetime | None

    @property
    def state(self) -> str:
        return "dropped" if self.dropped_at else "redriven" if self.redriven_at else "open"


def envelope_ids(payload: bytes) -> tuple[UUID | None, UUID | None, str | None]:
    """event_id, correlation_id and tenant_id of a payload, as far as it can be read (a poison one may not)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None, None, None
    if not isinstance(body, dict):
        return None, None, None

    def uuid_of(value: Any) -> UUID | None:
        try:
            return UUID(str(value)) if value is not None else None
        except ValueError:
            return None

    tenant = body.get("tenant_id")
    tenant_id = tenant if isinstance(tenant, str) else None
    return uuid_of(body.get("event_id")), uuid_of(body.get("correlation_id")), tenant_id


def _letter(row: asyncpg.Record) -> DeadLetter:  # the table's columns are DeadLetter's fields
    return DeadLetter(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - asyncpg.Record is not a dict


class PostgresDeadLetters:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, *, service: str, consumer: str, msg: Msg, error: str, deliveries: int) -> int | None:
        """Keep the message; None when this (consumer, sequence) was kept before."""
        event_id, correlation_id, tenant_id = envelope_ids(msg.data)
        result: int | None = await self._pool.fetchval(
            """INSERT INTO messaging.dead_letters (service, consumer, subject, stream_seq, event_id,
                   correlation_id, tenant_id, payload, headers, error, deliveries)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb, $10, $11)
                ON CONFLICT (consumer, stream_seq) DO NOTHING RETURNING id""",
            service,
            consumer,
            msg.subject,
            msg.metadata.sequence.stream,
            event_id,
            correlation_id,
            tenant_id,
            msg.data,
            json.dumps(dict(msg.headers or {})),
            error[:8000],
            deliveries,
        )
        return result

    async def list(self, *, consumer: str | None = None, every: bool = False, limit: int = 100) -> list[DeadLetter]:
        rows = await self._pool.fetch(
            """SELECT * FROM messaging.dead_letters
                WHERE ($1::text IS NULL OR consumer = $1)
                  AND ($2 OR (dropped_at IS NULL AND redriven_at IS NULL))
                ORDER BY id LIMIT $3""",
            consumer,
            every,
            limit,
        )
        return [_letter(row) for row in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        row = await self._pool.fetchrow("SELECT * FROM messaging.dead_letters WHERE id=$1", letter_id)
        return None if row is None else _letter(row)

    async def mark_redriven(self, letter_id: int) -> None:
        await self._pool.execute(
            "UPDATE messaging.dead_letters SET redriven_at=now(), redrive_count=redrive_count+1 WHERE id=$1",
            letter_id,
        )

    async def drop(self, letter_id: int) -> DeadLetter | None:
        row = await self._pool.fetchrow(
            """UPDATE messaging.dead_letters SET dropped_at=coalesce(dropped_at, now())
                WHERE id=$1 RETURNING *""",
            letter_id,
        )
        return None if row is None else _letter(row)

    async def open_counts(self) -> dict[str, int]:
        rows = await self._pool.fetch(
            """SELECT consumer, count(*) AS n FROM messaging.dead_letters
               WHERE dropped_at IS NULL AND redriven_at IS NULL GROUP BY consumer ORDER BY consumer"""
        )
        return {row["consumer"]: row["n"] for row in rows}


async def redrive(letter: DeadLetter, publish: Publish) -> str:
    """Publish the stored message again on its subject, for its consumer only; returns the Nats-Msg-Id used."""
    msg_id = f"redrive:{letter.id}:{letter.redrive_count + 1}"
    headers = {k: v for k, v in letter.headers.items() if k.lower() not in ("nats-msg-id", REDRIVE_HEADER.lower())}
    await publish(letter.subject, letter.payload, {**headers, "Nats-Msg-Id": msg_id, REDRIVE_HEADER: letter.consumer})
    return msg_id


def deliveries_of(msg: Msg) -> tuple[int, int | None]:
    """How many times `msg` was delivered, and its consumer's max_deliver if this process declared it."""
    return int(msg.metadata.num_delivered or 1), MAX_DELIVER.get(msg.metadata.consumer or "")


def backoff_s(num_delivered: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    return float(min(cap, base * 2 ** max(0, num_delivered - 1)))


class DeadLetterMiddleware:
    """The broker middleware factory: one `_Handling` per message (FastStream calls it with the raw message)."""

    def __init__(self, service: str, pool: Callable[[], asyncpg.Pool], publish: Publish) -> None:
        self.service = service
        self.pool = pool
        self.publish = publish

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _Handling:
        return _Handling(msg, context=context, owner=self)


class _Handling(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, owner: DeadLetterMiddleware) -> None:
        super().__init__(msg, context=context)
        self.owner = owner
        self.ids = contextlib.ExitStack()
        self.started = time.monotonic()

    async def on_receive(self) -> None:
        if isinstance(self.msg, Msg):
            event_id, correlation_id, _ = envelope_ids(self.msg.data)
            self.ids.enter_context(bind_message_ids(event_id=event_id, correlation_id=correlation_id))

    async def after_processed(
        self, exc_type: type[BaseException] | None = None, exc_val: BaseException | None = None, exc_tb: Any = None
    ) -> bool | None:
        try:
            if not isinstance(exc_val, Exception) or not isinstance(self.msg, Msg) or self.msg.metadata is None:
                return False
            return await self._failed(self.msg, exc_val)
        finally:
            self.ids.close()

    async def _failed(self, msg: Msg, error: Exception) -> bool:
        mark_failed(error)  # on the message's CONSUMER span (infra.tracing)
        delivered, max_deliver = deliveries_of(msg)
        consumer = msg.metadata.consumer or "?"
        reason = str(error) if isinstance(error, GiveUp) else f"{type(error).__name__}: {error}"
        if max_deliver is None or delivered < max_deliver:
            if not isinstance(error, GiveUp):  # settle logs its own failures; this one never reached a handler
                log.error("message could not be handled (delivery %d); retrying: %s", delivered, reason)
                record_handled(consumer, "failed", time.monotonic() - self.started)
            await msg.nak(delay=backoff_s(delivered))
            return True
        try:
            letter_id = await PostgresDeadLetters(self.owner.pool()).record(
                service=self.owner.service, consumer=consumer, msg=msg, error=reason, deliveries=delivered
            )
            event_id, correlation_id, tenant_id = envelope_ids(msg.data)
            notice = MessageDeadLettered.of(
                service=self.owner.service,
                consumer=consumer,
                message_subject=msg.subject,
                stream_seq=msg.metadata.sequence.stream,
                message_event_id=event_id,
                correlation_id=correlation_id,
                tenant_id=tenant_id,
                deliveries=delivered,
                error=reason,
                dead_letter_id=letter_id,
            )
            await self.owner.publish(
                notice.subject, notice.model_dump_json().encode(), {"Nats-Msg-Id": str(notice.event_id)}
            )
        except Exception:  # keep the message un-acked: JetStream's max-deliveries advisory still names it
            log.exception("could not dead-letter a message of %s after %d deliveries", consumer, delivered)
            return True
        log.error(
            "dead-lettered after %d deliveries: %s (`likeness dlq show %s`)",
            delivered,
            reason,
            letter_id,
            extra={"consumer": consumer, "dead_letter_id": letter_id},
        )
        record_handled(consumer, "dead_lettered", time.monotonic() - self.started)
        await msg.term()
        return True
