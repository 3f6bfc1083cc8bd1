"""Provider jobs submitted for shots in PostgreSQL (table `provider.shot_jobs`, migrations/0002_shot_jobs.sql).

Unlike the other repositories, this one is given the pool and each call is one statement that commits
on its own: a job id must be durable before the service waits on the job, whatever becomes of the
message's transaction (as `PostgresIdentities.set_job_id` is for identity jobs).
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from infra.db import DbConnection
from services.provider_adapter.ports import ShotJob, ShotJobOutcome


class PostgresShotJobs:
    def __init__(self, db: asyncpg.Pool | DbConnection) -> None:
        self._db = db

    async def latest(self, shot_id: UUID, take: int = 1) -> ShotJob | None:
        row = await self._db.fetchrow(
            """SELECT shot_id, take, attempt, provider, job_id, submitted_at, outcome, failure
               FROM provider.shot_jobs WHERE shot_id=$1 AND take=$2 ORDER BY attempt DESC LIMIT 1""",
            shot_id,
            take,
        )
        return None if row is None else _job(row)

    async def record(self, job: ShotJob, tenant_id: str) -> bool:
        try:
            await self._db.execute(
                """INSERT INTO provider.shot_jobs (shot_id, attempt, tenant_id, provider, job_id, submitted_at, take)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                job.shot_id,
                job.attempt,
                tenant_id,
                job.provider,
                job.job_id,
                job.submitted_at,
                job.take,
            )
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def settle(
        self, shot_id: UUID, attempt: int, job_id: str, outcome: ShotJobOutcome, failure: str | None = None
    ) -> None:
        await self._db.execute(
            """UPDATE provider.shot_jobs SET outcome=$4, failure=$5, finished_at=now()
               WHERE shot_id=$1 AND attempt=$2 AND job_id=$3""",
            shot_id,
            attempt,
            job_id,
            outcome,
            failure,
        )

    async def all_for(self, shot_id: UUID) -> list[ShotJob]:
        """Every job of the shot, by take, oldest first (for checks: no job was submitted twice)."""
        rows = await self._db.fetch(
            """SELECT shot_id, take, attempt, provider, job_id, submitted_at, outcome, failure
               FROM provider.shot_jobs WHERE shot_id=$1 ORDER BY take, attempt""",
            shot_id,
        )
        return [_job(row) for row in rows]


def _job(row: asyncpg.Record) -> ShotJob:
    return ShotJob(
        shot_id=row["shot_id"],
        attempt=row["attempt"],
        provider=row["provider"],
        job_id=row["job_id"],
        submitted_at=row["submitted_at"],
        outcome=row["outcome"],
        failure=row["failure"],
        take=row["take"],
    )
