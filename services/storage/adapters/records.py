"""The system of record in PostgreSQL (schema `records`), bound to one message's transaction."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

from contracts import (
    CharacterRequested,
    CostAlert,
    Event,
    HumanVoteCast,
    IdentityReady,
    ImageRef,
    ShotGenerated,
    ShotParams,
    ShotRequested,
    ShotScored,
)
from infra.db import DbConnection
from infra.month_spend import MONTH_SPEND_SQL
from services.storage.gate import NextTake
from services.storage.ports import CharacterRecord, MonthSpend, ShotCounts, ShotState

_CHARACTER = "SELECT character_id, tenant_id, provider, status FROM records.characters WHERE character_id=$1"
_CHARACTER_FOR_UPDATE = _CHARACTER + " FOR UPDATE"


class PostgresRecords:
    def __init__(self, conn: DbConnection) -> None:
        self._conn = conn

    async def add_character(self, event: CharacterRequested) -> None:
        await self._conn.execute(
            """INSERT INTO records.characters
                   (character_id, tenant_id, name, strategy, provider, status, created_at)
               VALUES ($1, $2, $3, $4, $5, 'building_identity', $6)
               ON CONFLICT (character_id) DO NOTHING""",
            event.character_id,
            event.tenant_id,
            event.name,
            event.strategy,
            event.provider,
            event.occurred_at,
        )
        await self._conn.executemany(
            """INSERT INTO records.reference_images (character_id, position, image)
               VALUES ($1, $2, $3::text::jsonb) ON CONFLICT DO NOTHING""",
            [(event.character_id, i, ref.model_dump_json()) for i, ref in enumerate(event.references)],
        )

    async def character(self, character_id: UUID, *, lock: bool = False) -> CharacterRecord | None:
        query = _CHARACTER_FOR_UPDATE if lock else _CHARACTER
        row = await self._conn.fetchrow(query, character_id)
        return None if row is None else CharacterRecord(**dict(row))

    async def references(self, character_id: UUID) -> list[ImageRef]:
        rows = await self._conn.fetch(
            "SELECT image FROM records.reference_images WHERE character_id=$1 ORDER BY position", character_id
        )
        return [ImageRef.model_validate(row["image"]) for row in rows]

    async def set_identity_progress(self, character_id: UUID, percent: float) -> None:
        await self._conn.execute(
            """UPDATE records.characters SET identity_percent=GREATEST(identity_percent, $2), updated_at=now()
               WHERE character_id=$1""",
            character_id,
            percent,
        )

    async def mark_identity_ready(self, event: IdentityReady) -> None:
        await self._conn.execute(
            """UPDATE records.characters SET status='ready', identity_percent=100, identity_ref=$2,
                   training_seconds=$3, identity_cost_usd=$4, identity_simulated=$5,
                   identity_weights=$6::text::jsonb, identity_ready_at=coalesce(identity_ready_at, $7),
                   updated_at=now()
               WHERE character_id=$1""",
            event.character_id,
            event.identity_ref,
            event.training_seconds,
            event.cost_usd,
            event.simulated,
            None if event.weights is None else event.weights.model_dump_json(),
            event.occurred_at,  # when the identity (and its cost) happened, not when this row was written
        )

    async def mark_identity_failed(self, character_id: UUID, reason: str) -> None:
        await self._conn.execute(
            """UPDATE records.characters SET status='identity_failed', identity_failure=$2, updated_at=now()
               WHERE character_id=$1""",
            character_id,
            reason,
        )

    async def set_character_status(self, character_id: UUID, status: str) -> None:
        await self._conn.execute(
            "UPDATE records.characters SET status=$2, updated_at=now() WHERE character_id=$1",
            character_id,
            status,
        )

    async def add_shot(self, event: ShotRequested, provider: str) -> None:
        await self._conn.execute(
            """INSERT INTO records.shots (shot_id, character_id, tenant_id, status, params, provider, requested_at)
               VALUES ($1, $2, $3, 'requested', $4::text::jsonb, $5, $6) ON CONFLICT (shot_id) DO NOTHING""",
            event.shot_id,
            event.character_id,
            event.tenant_id,
            event.params.model_dump_json(),
            provider,
            event.occurred_at,
        )
        await self._conn.execute(
            """INSERT INTO records.shot_takes (shot_id, take, tenant_id, reason, provider, seed, status, requested_at)
               SELECT shot_id, 1, tenant_id, 'first', provider, $2, 'requested', requested_at
                 FROM records.shots WHERE shot_id=$1
               ON CONFLICT (shot_id, take) DO NOTHING""",
            event.shot_id,
            event.params.seed,
        )

    async def shot_tenant(self, shot_id: UUID) -> str | None:
        tenant = await self._conn.fetchval("SELECT tenant_id FROM records.shots WHERE shot_id=$1", shot_id)
        return None if tenant is None else str(tenant)

    async def record_vote(self, event: HumanVoteCast) -> None:
        await self._conn.execute(
            """INSERT INTO records.votes (shot_id, rater, tenant_id, character_id, answer, event_id, voted_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (shot_id, rater) DO UPDATE
                 SET answer=EXCLUDED.answer, event_id=EXCLUDED.event_id, voted_at=EXCLUDED.voted_at
                 WHERE records.votes.voted_at <= EXCLUDED.voted_at""",
            event.shot_id,
            event.rater,
            event.tenant_id,
            event.character_id,
            event.answer,
            event.event_id,
            event.occurred_at,
        )

    async def shot_exists(self, shot_id: UUID) -> bool:
        return await self._conn.fetchval("SELECT 1 FROM records.shots WHERE shot_id=$1", shot_id) is not None

    async def mark_shot_stored(self, event: ShotGenerated) -> str | None:
        await self._conn.execute(
            """UPDATE records.shot_takes SET status='stored', image=$2::text::jsonb, latency_ms=$3, cost_usd=$4,
                   attempts=$5, simulation=$6::text::jsonb, provider=$7, stored_at=$8, rerouted_from=$10
               WHERE shot_id=$1 AND take=$9 AND status IN ('requested', 'stored')""",
            event.shot_id,
            event.image.model_dump_json(),
            event.latency_ms,
            event.cost_usd,
            event.attempts,
            None if event.simulation is None else event.simulation.model_dump_json(),
            event.provider,
            event.occurred_at,
            event.take,
            event.rerouted_from,
        )
        prompt = await self._conn.fetchval(
            """UPDATE records.shots SET status='stored', image=$2::text::jsonb, latency_ms=$3, cost_usd=$4,
                   attempts=$5, simulation=$6::text::jsonb, provider=$7, stored_at=$8
               WHERE shot_id=$1 AND take=$9 AND status IN ('requested', 'stored')
               RETURNING params->>'prompt'""",
            event.shot_id,
            event.image.model_dump_json(),
            event.latency_ms,
            event.cost_usd,
            event.attempts,
            None if event.simulation is None else event.simulation.model_dump_json(),
            event.provider,
            event.occurred_at,  # when the shot was generated: a rebuild from the stream gives the same value
            event.take,
        )
        return None if prompt is None else str(prompt)

    async def add_score(self, event: ShotScored) -> bool:
        score = event.score
        await self._conn.execute(
            """INSERT INTO records.scores (shot_id, event_id, scorer_version, scorer_key, verdict, face_distance,
                                           clip_similarity, score, scored_at, take)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)
               ON CONFLICT DO NOTHING""",
            event.shot_id,
            event.event_id,
            score.scorer_version,
            score.scorer_key,
            score.verdict,
            None if score.face is None else score.face.distance,
            score.clip.image_similarity,
            score.model_dump_json(),
            event.occurred_at,
            event.take,
        )
        first = await self._conn.fetchval(
            """UPDATE records.shot_takes SET status='scored', verdict=$3, finished_at=$2
               WHERE shot_id=$1 AND take=$4 AND status NOT IN ('scored', 'failed') RETURNING true""",
            event.shot_id,
            event.occurred_at,
            score.verdict,
            event.take,
        )
        return bool(first)

    async def shot_state(self, shot_id: UUID) -> ShotState | None:
        row = await self._conn.fetchrow("SELECT take, status, params FROM records.shots WHERE shot_id=$1", shot_id)
        if row is None:
            return None
        return ShotState(shot_id, row["take"], row["status"], ShotParams.model_validate(row["params"]))

    async def begin_take(self, shot_id: UUID, next_take: NextTake, requested_at: datetime) -> None:
        await self._conn.execute(
            """INSERT INTO records.shot_takes (shot_id, take, tenant_id, reason, provider, seed, status, requested_at)
               SELECT shot_id, $2, tenant_id, $3, $4, $5, 'requested', $6 FROM records.shots WHERE shot_id=$1
               ON CONFLICT (shot_id, take) DO NOTHING""",
            shot_id,
            next_take.take,
            next_take.reason,
            next_take.provider,
            next_take.seed,
            requested_at,
        )
        await self._conn.execute(
            "UPDATE records.shots SET take=$2, status='requested' WHERE shot_id=$1 AND take < $2",
            shot_id,
            next_take.take,
        )

    async def finish_shot(self, shot_id: UUID, take: int, finished_at: datetime) -> bool:
        first = await self._conn.fetchval(
            """UPDATE records.shots SET status='scored', finished_at=$3
               WHERE shot_id=$1 AND take=$2 AND status NOT IN ('scored', 'failed') RETURNING true""",
            shot_id,
            take,
            finished_at,
        )
        return bool(first)

    async def mark_shot_failed(self, shot_id: UUID, stage: str, reason: str, take: int = 1) -> None:
        await self._conn.execute(
            """UPDATE records.shot_takes SET status='failed', failure_reason=$3, finished_at=now()
               WHERE shot_id=$1 AND take=$2 AND status <> 'scored'""",
            shot_id,
            take,
            reason,
        )
        await self._conn.execute(
            """UPDATE records.shots SET status='failed', failure_stage=$2, failure_reason=$3, finished_at=now()
               WHERE shot_id=$1 AND status <> 'scored' AND take=$4""",
            shot_id,
            stage,
            reason,
            take,
        )

    async def shot_counts(self, character_id: UUID) -> ShotCounts:
        row = await self._conn.fetchrow(
            """SELECT count(*) AS total,
                      count(*) FILTER (WHERE status='scored') AS scored,
                      count(*) FILTER (WHERE status='failed') AS failed
               FROM records.shots WHERE character_id=$1""",
            character_id,
        )
        verdict_rows = await self._conn.fetch(
            """SELECT DISTINCT ON (s.shot_id) s.shot_id, sc.verdict
               FROM records.shots s JOIN records.scores sc ON sc.shot_id = s.shot_id AND sc.take = s.take
               WHERE s.character_id=$1 AND s.status = 'scored' ORDER BY s.shot_id, sc.scored_at DESC""",
            character_id,
        )
        verdicts: dict[str, int] = {}
        for verdict_row in verdict_rows:
            verdicts[verdict_row["verdict"]] = verdicts.get(verdict_row["verdict"], 0) + 1
        assert row is not None
        return ShotCounts(total=row["total"], scored=row["scored"], failed=row["failed"], verdicts=verdicts)

    async def month_spend(self, tenant_id: str) -> MonthSpend | None:
        # The budget lives in the gateway's schema (`likeness budgets` writes it); storage only reads it, and a
        # database whose gateway has not created the table yet has no budgets.
        if not await self._conn.fetchval("SELECT to_regclass('gateway.budgets') IS NOT NULL"):
            return None
        budget = await self._conn.fetchval("SELECT monthly_usd FROM gateway.budgets WHERE tenant_id=$1", tenant_id)
        if budget is None:
            return None
        # One cost at a time per budgeted tenant (until this transaction ends): the sum below then sees every
        # cost committed before it, so no two replicas can both miss a threshold their costs cross together.
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('likeness-budget'), hashtext($1))", tenant_id)
        row = await self._conn.fetchrow(MONTH_SPEND_SQL, tenant_id)
        assert row is not None
        return MonthSpend(
            month=row["month"],
            budget_usd=float(budget),
            spend_usd=float(row["spend_usd"]),
            simulated_usd=float(row["simulated_usd"]),
        )

    async def record_cost_alert(self, alert: CostAlert) -> bool:
        first = await self._conn.fetchval(
            """INSERT INTO records.cost_alerts
                   (tenant_id, month, threshold_percent, event_id, budget_usd, spend_usd, simulated_usd)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING true""",
            alert.tenant_id,
            alert.month,
            alert.threshold_percent,
            alert.event_id,
            alert.budget_usd,
            alert.spend_usd,
            alert.simulated_usd,
        )
        return bool(first)

    async def log_events(self, events: list[Event], character_id: UUID) -> None:
        await self._conn.executemany(
            """INSERT INTO records.event_log (event_id, tenant_id, character_id, type, payload, occurred_at)
               VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) ON CONFLICT (event_id) DO NOTHING""",
            [
                (
                    e.event_id,
                    e.tenant_id,
                    character_id,
                    e.type,
                    json.dumps(e.model_dump(mode="json")),
                    e.occurred_at,
                )
                for e in events
            ],
        )
