"""Shots through a provider's two steps, for tests: straight through, or with the service's job record."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

from services.provider_adapter.ports import (
    GeneratedImage,
    ProgressCallback,
    Provider,
    ShotJob,
    ShotJobOutcome,
    ShotRequest,
)


async def generate(
    provider: Provider, request: ShotRequest, on_progress: ProgressCallback | None = None
) -> GeneratedImage:
    """Submit the shot and wait for it: what the service does, without saving the job id between."""
    job_id = await provider.start_shot(request)
    return await provider.finish_shot(job_id, request, on_progress)


class InMemoryShotJobs:
    """`ports.ShotJobs` in memory, with the table's rule: one job per shot, take and submission."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[UUID, int, int], ShotJob] = {}
        self.refused_records: list[ShotJob] = []

    async def latest(self, shot_id: UUID, take: int = 1) -> ShotJob | None:
        found = [job for (shot, job_take, _), job in self.jobs.items() if (shot, job_take) == (shot_id, take)]
        return max(found, key=lambda job: job.attempt, default=None)

    async def record(self, job: ShotJob, tenant_id: str) -> bool:
        if (job.shot_id, job.take, job.attempt) in self.jobs:
            self.refused_records.append(job)
            return False
        self.jobs[(job.shot_id, job.take, job.attempt)] = job
        return True

    async def settle(
        self, shot_id: UUID, attempt: int, job_id: str, outcome: ShotJobOutcome, failure: str | None = None
    ) -> None:
        for key, job in self.jobs.items():
            if (job.shot_id, job.attempt, job.job_id) == (shot_id, attempt, job_id):
                self.jobs[key] = replace(job, outcome=outcome, failure=failure)

    def of(self, shot_id: UUID) -> list[ShotJob]:
        mine = (job for (shot, _, _), job in self.jobs.items() if shot == shot_id)
        return sorted(mine, key=lambda job: (job.take, job.attempt))
