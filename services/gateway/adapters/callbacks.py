"""Apps' callback endpoints and the delivery log (schema `gateway`, migrations/0002_callbacks.sql).

Every query an app's call leads to is filtered by tenant. Deliveries are claimed with a lease
(`FOR UPDATE SKIP LOCKED`, then `next_attempt_at` moved past the attempt's time limit), so gateway
replicas share the work without holding a transaction open while they wait on an app.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast
from uuid import UUID

import asyncpg

CallbackEvent = Literal["ShotScored", "CharacterCompleted"]
DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: UUID
    tenant_id: str
    url: str
    events: tuple[CallbackEvent, ...]
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    delivery_id: UUID
    endpoint_id: UUID
    event_id: UUID
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery taken for one attempt (`attempts` counts it), with what sending it needs."""

    delivery_id: UUID
    endpoint_id: UUID
    event_id: UUID
    attempts: int
    url: str
    secret: str
    body: str

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return (
            f"ClaimedDelivery(delivery_id={self.delivery_id}, endpoint_id={self.endpoint_id}, attempt={self.attempts})"
        )


def _endpoint(row: asyncpg.Record) -> Endpoint:
    return Endpoint(
        endpoint_id=row["endpoint_id"],
        tenant_id=row["tenant_id"],
        url=row["url"],
        events=tuple(cast(list[CallbackEvent], row["events"])),
        created_at=row["created_at"],
    )


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(**{name: row[name] for name in Delivery.__dataclass_fields__})


class PostgresCallbacks:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: str, url: str, events: list[CallbackEvent], secret: str) -> Endpoint:
        row = await self._pool.fetchrow(
            """INSERT INTO gateway.callback_endpoints (endpoint_id, tenant_id, url, events, secret)
                VALUES ($1, $2, $3, $4, $5) RETURNING endpoint_id, tenant_id, url, events, created_at""",
            uuid.uuid4(),
            tenant_id,
            url,
            events,
            secret,
        )
        assert row is not None
        return _endpoint(row)

    async def count(self, tenant_id: str) -> int:
        found = await self._pool.fetchval(
            "SELECT count(*) FROM gateway.callback_endpoints WHERE tenant_id = $1", tenant_id
        )
        return int(found)

    async def endpoints(self, tenant_id: str) -> list[Endpoint]:
        rows = await self._pool.fetch(
            """SELECT endpoint_id, tenant_id, url, events, created_at FROM gateway.callback_endpoints
                WHERE tenant_id = $1 ORDER BY created_at, endpoint_id""",
            tenant_id,
        )
        return [_endpoint(row) for row in rows]

    async def get(self, tenant_id: str, endpoint_id: UUID) -> Endpoint | None:
        row = await self._pool.fetchrow(
            """SELECT endpoint_id, tenant_id, url, events, created_at FROM gateway.callback_endpoints
                WHERE tenant_id = $1 AND endpoint_id = $2""",
            tenant_id,
            endpoint_id,
        )
        return None if row is None else _endpoint(row)

    async def delete(self, tenant_id: str, endpoint_id: UUID) -> bool:
        """Remove the endpoint and its delivery log (pending deliveries are never sent)."""
        result = await self._pool.execute(
            "DELETE FROM gateway.callback_endpoints WHERE tenant_id = $1 AND endpoint_id = $2", tenant_id, endpoint_id
        )
        return bool(result.endswith(" 1"))

    async def deliveries(self, tenant_id: str, endpoint_id: UUID, *, limit: int) -> list[Delivery]:
        rows = await self._pool.fetch(
            """SELECT delivery_id, endpoint_id, event_id, event_type, status, attempts, last_status_code,
                       last_error, next_attempt_at, last_attempt_at, delivered_at, created_at
                  FROM gateway.callback_deliveries
                WHERE tenant_id = $1 AND endpoint_id = $2
                ORDER BY created_at DESC, delivery_id LIMIT $3""",
            tenant_id,
            endpoint_id,
            limit,
        )
        return [_delivery(row) for row in rows]

    async def enqueue(self, tenant_id: str, event_id: UUID, event_type: str, body: str) -> int:
        """One pending delivery for each of the tenant's endpoints that asked for this event type, once.

        Returns how many were added (0 for an event seen before, or one nobody asked for).
        """
        result = await self._pool.execute(
            """INSERT INTO gateway.callback_deliveries
                   (delivery_id, endpoint_id, tenant_id, event_id, event_type, body, next_attempt_at)
               SELECT gen_random_uuid(), endpoint_id, tenant_id, $2, $3, $4, now()
                 FROM gateway.callback_endpoints
                WHERE tenant_id = $1 AND $3 = ANY(events)
               ON CONFLICT (endpoint_id, event_id) DO NOTHING""",
            tenant_id,
            event_id,
            event_type,
            body,
        )
        return int(result.rsplit(" ", 1)[-1])

    async def claim(self, *, limit: int, lease_s: float) -> list[ClaimedDelivery]:
        """Take up to `limit` due deliveries for one attempt each; another replica sees them again after `lease_s`
        (if this one stops before recording the attempt)."""
        rows = await self._pool.fetch(
            """UPDATE gateway.callback_deliveries AS d
                  SET attempts = d.attempts + 1, last_attempt_at = now(),
                      next_attempt_at = now() + make_interval(secs => $2)
                 FROM gateway.callback_endpoints AS e
                WHERE e.endpoint_id = d.endpoint_id
                  AND d.delivery_id IN (
                      SELECT delivery_id FROM gateway.callback_deliveries
                       WHERE status = 'pending' AND next_attempt_at <= now()
                       ORDER BY next_attempt_at
                       LIMIT $1
                       FOR UPDATE SKIP LOCKED)
            RETURNING d.delivery_id, d.endpoint_id, d.event_id, d.attempts, d.body, e.url, e.secret""",
            limit,
            lease_s,
        )
        return [
            ClaimedDelivery(
                delivery_id=row["delivery_id"],
                endpoint_id=row["endpoint_id"],
                event_id=row["event_id"],
                attempts=row["attempts"],
                url=row["url"],
                secret=row["secret"],
                body=row["body"],
            )
            for row in rows
        ]

    async def delivered(self, claimed: ClaimedDelivery, status_code: int) -> None:
        await self._pool.execute(
            """UPDATE gateway.callback_deliveries
                  SET status = 'delivered', last_status_code = $3, last_error = NULL,
                      next_attempt_at = NULL, delivered_at = now()
                WHERE delivery_id = $1 AND attempts = $2 AND status = 'pending'""",
            claimed.delivery_id,
            claimed.attempts,
            status_code,
        )

    async def attempt_failed(
        self, claimed: ClaimedDelivery, *, status_code: int | None, error: str, retry_in_s: float | None
    ) -> None:
        """Record a failed attempt: due again in `retry_in_s`, or failed for good when that is None."""
        await self._pool.execute(
            """UPDATE gateway.callback_deliveries
                  SET last_status_code = $3, last_error = $4,
                      status = CASE WHEN $5::float8 IS NULL THEN 'failed' ELSE 'pending' END,
                      next_attempt_at = CASE WHEN $5::float8 IS NULL THEN NULL
                                             ELSE now() + make_interval(secs => $5::float8) END
                WHERE delivery_id = $1 AND attempts = $2 AND status = 'pending'""",
            claimed.delivery_id,
            claimed.attempts,
            status_code,
            error,
            retry_in_s,
        )
