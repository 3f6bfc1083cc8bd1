"""Shot jobs are submitted once: a redelivered GenerateShot resumes the saved provider job (handlers.generate)."""

from __future__ import annotations

import logging
import uuid
from collections import deque

import pytest

from contracts import GenerateShot, ShotFailed, ShotParams
from services.provider_adapter import handlers
from services.provider_adapter.ports import (
    GeneratedImage,
    PermanentProviderError,
    ProgressCallback,
    ProviderError,
    ProviderJobFailed,
    ShotRequest,
    TransientProviderError,
)
from tests.fakes import image_ref
from tests.provider_shots import InMemoryShotJobs

IMAGE = GeneratedImage(data=b"png", content_type="image/png", latency_ms=10.0, cost_usd=0.01)


class ScriptedProvider:
    """Counts submissions; each finish_shot plays the next scripted error, else returns IMAGE."""

    name = "scripted"
    simulated = True

    def __init__(self, *finishes: ProviderError) -> None:
        self.started: list[ShotRequest] = []
        self.finished: list[tuple[str, int]] = []
        self._finishes = deque(finishes)

    def available(self) -> bool:
        return True

    async def create_identity(self, request: object) -> str:
        raise NotImplementedError

    async def identity_status(self, job_id: str) -> object:
        raise NotImplementedError

    async def start_shot(self, request: ShotRequest) -> str:
        self.started.append(request)
        return f"job-{len(self.started)}"

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        self.finished.append((job_id, request.attempt))
        if self._finishes:
            raise self._finishes.popleft()
        return IMAGE


def command() -> GenerateShot:
    character_id = uuid.uuid4()
    return GenerateShot(
        correlation_id=character_id,
        tenant_id="studio",
        shot_id=uuid.uuid4(),
        character_id=character_id,
        provider="scripted",
        identity_ref="scripted:identity",
        params=ShotParams(prompt="noir", seed=3),
        references=[image_ref()],
    )


async def deliver(
    shot: GenerateShot, provider: ScriptedProvider, jobs: InMemoryShotJobs, attempt: int, max_attempts: int = 3
) -> GeneratedImage | ShotFailed:
    return await handlers.generate(
        shot,
        provider=provider,  # type: ignore[arg-type]  # the identity half of the protocol is never called here
        references=[],
        attempt=attempt,
        max_attempts=max_attempts,
        jobs=jobs,
    )


async def test_a_job_still_running_is_resumed_not_submitted_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    provider, jobs, shot = ScriptedProvider(TransientProviderError("poll failed")), InMemoryShotJobs(), command()
    with pytest.raises(TransientProviderError):
        await deliver(shot, provider, jobs, attempt=1)
    assert await deliver(shot, provider, jobs, attempt=2) == IMAGE
    assert len(provider.started) == 1
    assert provider.finished == [("job-1", 1), ("job-1", 1)]
    assert [(job.attempt, job.outcome) for job in jobs.of(shot.shot_id)] == [(1, "succeeded")]
    assert "resuming scripted job job-1 (submission 1, still running) instead of submitting again" in caplog.text


async def test_a_crash_after_the_image_was_made_fetches_it_again_without_submitting() -> None:
    provider, jobs, shot = ScriptedProvider(), InMemoryShotJobs(), command()
    assert await deliver(shot, provider, jobs, attempt=1) == IMAGE
    assert await deliver(shot, provider, jobs, attempt=2) == IMAGE  # the ShotGenerated was never committed
    assert len(provider.started) == 1


async def test_a_job_the_provider_failed_is_submitted_again_as_the_next_attempt() -> None:
    provider, jobs, shot = ScriptedProvider(ProviderJobFailed("runner died")), InMemoryShotJobs(), command()
    with pytest.raises(ProviderJobFailed):
        await deliver(shot, provider, jobs, attempt=1)
    assert await deliver(shot, provider, jobs, attempt=2) == IMAGE
    assert [request.attempt for request in provider.started] == [1, 2]
    assert [(job.attempt, job.outcome) for job in jobs.of(shot.shot_id)] == [(1, "failed"), (2, "succeeded")]


async def test_attempts_run_out_as_before_and_nothing_is_submitted_after() -> None:
    failures = [ProviderJobFailed("runner died")] * 3
    provider, jobs, shot = ScriptedProvider(*failures), InMemoryShotJobs(), command()
    for attempt in (1, 2):
        with pytest.raises(ProviderJobFailed):
            await deliver(shot, provider, jobs, attempt=attempt)
    outcome = await deliver(shot, provider, jobs, attempt=3)
    assert isinstance(outcome, ShotFailed)
    assert outcome.reason.startswith("gave up after 3 attempts: runner died")
    again = await deliver(shot, provider, jobs, attempt=4)  # redelivered after a crash before the commit
    assert isinstance(again, ShotFailed)
    assert len(provider.started) == 3


async def test_a_refused_shot_fails_once_and_a_redelivery_submits_nothing() -> None:
    provider, jobs, shot = ScriptedProvider(PermanentProviderError("nsfw")), InMemoryShotJobs(), command()
    first = await deliver(shot, provider, jobs, attempt=1)
    second = await deliver(shot, provider, jobs, attempt=2)
    assert isinstance(first, ShotFailed)
    assert isinstance(second, ShotFailed)
    assert first.event_id == second.event_id
    assert "nsfw" in second.reason
    assert len(provider.started) == 1
    assert [job.outcome for job in jobs.of(shot.shot_id)] == ["refused"]


async def test_a_running_job_given_up_on_is_abandoned_and_not_resumed() -> None:
    provider, jobs, shot = ScriptedProvider(TransientProviderError("poll failed")), InMemoryShotJobs(), command()
    outcome = await deliver(shot, provider, jobs, attempt=1, max_attempts=1)
    assert isinstance(outcome, ShotFailed)
    assert [job.outcome for job in jobs.of(shot.shot_id)] == ["abandoned"]
    assert isinstance(await deliver(shot, provider, jobs, attempt=2, max_attempts=1), ShotFailed)
    assert len(provider.finished) == 1


async def test_a_second_job_for_the_same_submission_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    provider, jobs, shot = ScriptedProvider(), InMemoryShotJobs(), command()
    racing = ScriptedProvider()
    await racing.start_shot(ShotRequest(shot.shot_id, shot.character_id, "x", shot.params, []))

    class RaceLost(InMemoryShotJobs):
        async def latest(self, shot_id: uuid.UUID, take: int = 1) -> None:  # both looked before either recorded
            return None

    jobs = RaceLost()
    assert await deliver(shot, racing, jobs, attempt=1) == IMAGE
    assert await deliver(shot, provider, jobs, attempt=1) == IMAGE
    assert len(jobs.refused_records) == 1
    assert "was submitted twice" in caplog.text
