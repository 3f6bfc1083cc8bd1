"""The gateway's read-only view of the system of record (schema `records`, written by storage).

Every query filters by tenant: a character of another tenant is indistinguishable from a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from infra.month_spend import MONTH_SPEND_SQL
from services.gateway.budgets import BudgetStanding

_SHOT_COLUMNS = """
    s.shot_id, s.character_id, s.status, s.params, s.provider, s.image, s.latency_ms, s.cost_usd,
    s.attempts, s.simulation, s.failure_stage, s.failure_reason, s.requested_at, s.finished_at, s.take,
    (SELECT sc.score FROM records.scores sc WHERE sc.shot_id = s.shot_id AND sc.take = s.take
      ORDER BY sc.scored_at DESC, sc.score_id DESC LIMIT 1) AS score
"""

# Every take of the given shots (the consistency gate's retakes included), in order, each with its newest score.
_TAKES = """
    SELECT t.shot_id, t.take, t.reason, t.provider, t.rerouted_from, t.seed, t.status, t.image, t.latency_ms,
           t.cost_usd, t.attempts, t.simulation, t.failure_reason, t.requested_at, t.finished_at,
           (SELECT sc.score FROM records.scores sc WHERE sc.shot_id = t.shot_id AND sc.take = t.take
             ORDER BY sc.scored_at DESC, sc.score_id DESC LIMIT 1) AS score
    FROM records.shot_takes t WHERE t.shot_id = ANY($1::uuid[]) AND t.tenant_id = $2 ORDER BY t.shot_id, t.take
"""


def _take(row: asyncpg.Record, final_take: int | None) -> dict[str, Any]:
    return {
        "take": row["take"],
        "reason": row["reason"],
        "provider": row["provider"],
        "rerouted_from": row["rerouted_from"],
        "seed": row["seed"],
        "status": row["status"],
        "image": row["image"],
        "latency_ms": row["latency_ms"],
        "cost_usd": row["cost_usd"],
        "attempts": row["attempts"],
        "simulation": row["simulation"],
        "score": row["score"],
        "failure": row["failure_reason"],
        "final": row["take"] == final_take,
        "requested_at": row["requested_at"].isoformat(),
        "finished_at": None if row["finished_at"] is None else row["finished_at"].isoformat(),
    }


def _shot(row: asyncpg.Record) -> dict[str, Any]:
    failure = None
    if row["failure_stage"] is not None:
        failure = {"stage": row["failure_stage"], "reason": row["failure_reason"]}
    return {
        "shot_id": str(row["shot_id"]),
        "character_id": str(row["character_id"]),
        "status": row["status"],
        "params": row["params"],
        "provider": row["provider"],
        "image": row["image"],
        "latency_ms": row["latency_ms"],
        "cost_usd": row["cost_usd"],
        "attempts": row["attempts"],
        "simulation": row["simulation"],
        "score": row["score"],
        "failure": failure,
        "requested_at": row["requested_at"].isoformat(),
        "finished_at": None if row["finished_at"] is None else row["finished_at"].isoformat(),
        "take": row["take"],
        "final_take": row["take"] if row["status"] in ("scored", "failed") else None,
        "takes": [],
    }


def _weights(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The copied weights, with where to download them (`GET /v1/artifacts/<sha256>`)."""
    if stored is None:
        return None
    return {**stored, "url": f"/v1/artifacts/{stored['sha256']}"}


class ReadModel:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def budget_standing(self, tenant_id: str) -> BudgetStanding | None:
        """The tenant's monthly budget and this month's recorded spend; None when it has no budget (no limit)."""
        budget = await self._pool.fetchval("SELECT monthly_usd FROM gateway.budgets WHERE tenant_id=$1", tenant_id)
        if budget is None:
            return None  # and records is not read at all
        row = await self._pool.fetchrow(MONTH_SPEND_SQL, tenant_id)
        assert row is not None
        return BudgetStanding(
            tenant_id=tenant_id,
            month=row["month"],
            budget_usd=float(budget),
            spend_usd=float(row["spend_usd"]),
            simulated_usd=float(row["simulated_usd"]),
            resets_at=row["end_at"],
        )

    async def character_exists(self, tenant_id: str, character_id: UUID) -> bool:
        found = await self._pool.fetchval(
            "SELECT 1 FROM records.characters WHERE character_id=$1 AND tenant_id=$2", character_id, tenant_id
        )
        return found is not None

    async def characters(self, tenant_id: str, *, limit: int, before: str | None = None) -> list[dict[str, Any]]:
        """The tenant's characters, newest first, with their shot counts (`before`: a created_at to page from)."""
        rows = await self._pool.fetch(
            """SELECT c.character_id, c.name, c.strategy, c.provider, c.status, c.created_at,
                      count(s.shot_id) AS shots,
                      count(s.shot_id) FILTER (WHERE s.status = 'scored') AS scored,
                      count(s.shot_id) FILTER (WHERE s.status = 'failed') AS failed
               FROM records.characters c LEFT JOIN records.shots s ON s.character_id = c.character_id
               WHERE c.tenant_id = $1 AND ($2::timestamptz IS NULL OR c.created_at < $2)
               GROUP BY c.character_id
               ORDER BY c.created_at DESC, c.character_id LIMIT $3""",
            tenant_id,
            None if before is None else datetime.fromisoformat(before),
            limit,
        )
        return [
            {
                "character_id": str(row["character_id"]),
                "name": row["name"],
                "strategy": row["strategy"],
                "provider": row["provider"],
                "status": row["status"],
                "created_at": row["created_at"].isoformat(),
                "shots": {"requested": row["shots"], "scored": row["scored"], "failed": row["failed"]},
            }
            for row in rows
        ]

    async def character(self, tenant_id: str, character_id: UUID) -> dict[str, Any] | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM records.characters WHERE character_id=$1 AND tenant_id=$2", character_id, tenant_id
        )
        if row is None:
            return None
        references = await self._pool.fetch(
            "SELECT image FROM records.reference_images WHERE character_id=$1 ORDER BY position", character_id
        )
        shots = await self._pool.fetch(
            f"SELECT {_SHOT_COLUMNS} FROM records.shots s WHERE s.character_id=$1 ORDER BY s.requested_at, s.shot_id",  # noqa: S608 - constant columns
            character_id,
        )
        identity = None
        if row["identity_ref"] is not None or row["identity_failure"] is not None:
            identity = {
                "state": "failed" if row["identity_failure"] else "ready",
                "identity_ref": row["identity_ref"],
                "training_seconds": row["training_seconds"],
                "cost_usd": row["identity_cost_usd"],
                "simulated": bool(row["identity_simulated"]),
                "failure": row["identity_failure"],
                "weights": _weights(row["identity_weights"]),
            }
        return {
            "character_id": str(row["character_id"]),
            "name": row["name"],
            "strategy": row["strategy"],
            "provider": row["provider"],
            "status": row["status"],
            "identity_percent": row["identity_percent"],
            "created_at": row["created_at"].isoformat(),
            "identity": identity,
            "references": [r["image"] for r in references],
            "shots": await self._with_takes(tenant_id, [_shot(s) for s in shots]),
        }

    async def _with_takes(self, tenant_id: str, shots: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each shot's takes, in order, the final one marked (a shot the gate never retook has one)."""
        by_id = {shot["shot_id"]: shot for shot in shots}
        if by_id:
            for row in await self._pool.fetch(_TAKES, [UUID(shot_id) for shot_id in by_id], tenant_id):
                shot = by_id[str(row["shot_id"])]
                shot["takes"].append(_take(row, shot["final_take"]))
        return shots

    async def report_rows(
        self, tenant_id: str, *, character_id: UUID | None = None
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """The tenant's shots, one row per take (the consistency gate's retakes are shots their providers made and
        were paid for), each with its newest score, and identities: what reports are computed from."""
        shots = await self._pool.fetch(
            """SELECT s.shot_id, s.character_id, t.provider, c.strategy, s.params->>'scenario' AS scenario, t.status,
                      t.take, t.reason AS take_reason, (t.take = s.take AND s.status IN ('scored', 'failed')) AS final,
                      sc.verdict, sc.face_distance,
                      (sc.score->'clip'->>'image_similarity')::double precision AS clip_image,
                      (sc.score->'clip'->>'text_similarity')::double precision AS clip_text,
                      coalesce((sc.score->'clip'->>'calibrated')::boolean, true) AS clip_calibrated,
                      t.latency_ms, t.cost_usd, t.simulation IS NOT NULL AS simulated
               FROM records.shot_takes t
               JOIN records.shots s ON s.shot_id = t.shot_id
               JOIN records.characters c ON c.character_id = s.character_id
               LEFT JOIN LATERAL (
                   SELECT verdict, face_distance, score FROM records.scores
                   WHERE shot_id = t.shot_id AND take = t.take ORDER BY scored_at DESC, score_id DESC LIMIT 1
               ) sc ON t.status = 'scored'
               WHERE s.tenant_id = $1 AND c.tenant_id = $1 AND ($2::uuid IS NULL OR s.character_id = $2)
               ORDER BY s.requested_at, s.shot_id, t.take""",
            tenant_id,
            character_id,
        )
        identities = await self._pool.fetch(
            """SELECT character_id, provider, strategy,
                      CASE WHEN identity_failure IS NOT NULL THEN 'failed'
                           WHEN identity_ref IS NOT NULL THEN 'ready' ELSE 'pending' END AS state,
                      training_seconds, identity_cost_usd AS cost_usd, coalesce(identity_simulated, false) AS simulated
               FROM records.characters
               WHERE tenant_id = $1 AND ($2::uuid IS NULL OR character_id = $2)
               ORDER BY created_at, character_id""",
            tenant_id,
            character_id,
        )
        return list(shots), list(identities)

    async def votes(
        self, tenant_id: str, *, character_id: UUID | None = None, provider: str | None = None
    ) -> list[asyncpg.Record]:
        """Every vote of the tenant (optionally one character's or one provider's), with the shot's newest verdict."""
        return list(
            await self._pool.fetch(
                """SELECT v.shot_id, v.character_id, s.provider, v.rater, v.answer,
                          (SELECT sc.verdict FROM records.scores sc WHERE sc.shot_id = v.shot_id AND sc.take = s.take
                            ORDER BY sc.scored_at DESC, sc.score_id DESC LIMIT 1) AS verdict
                   FROM records.votes v JOIN records.shots s ON s.shot_id = v.shot_id
                   WHERE v.tenant_id = $1 AND s.tenant_id = $1
                     AND ($2::uuid IS NULL OR v.character_id = $2) AND ($3::text IS NULL OR s.provider = $3)
                   ORDER BY v.voted_at, v.shot_id, v.rater""",
                tenant_id,
                character_id,
                provider,
            )
        )

    async def shot(self, tenant_id: str, shot_id: UUID) -> dict[str, Any] | None:
        row = await self._pool.fetchrow(
            f"SELECT {_SHOT_COLUMNS} FROM records.shots s WHERE s.shot_id=$1 AND s.tenant_id=$2",  # noqa: S608 - constant columns
            shot_id,
            tenant_id,
        )
        return None if row is None else (await self._with_takes(tenant_id, [_shot(row)]))[0]

    async def events_after(
        self, tenant_id: str, character_id: UUID, after_seq: int, limit: int = 200
    ) -> list[tuple[int, str, dict[str, Any]]]:
        rows = await self._pool.fetch(
            """SELECT seq, type, payload FROM records.event_log
               WHERE character_id=$1 AND tenant_id=$2 AND seq > $3 ORDER BY seq LIMIT $4""",
            character_id,
            tenant_id,
            after_seq,
            limit,
        )
        return [(row["seq"], row["type"], row["payload"]) for row in rows]
