"""A shot's provider job is submitted once, even when the provider adapter stops while waiting on it.

`ProviderWork.generate_shot` runs on the real stack (PostgreSQL, the S3 server, NATS). The shot's
provider job is slow; the worker is stopped mid-wait (its task cancelled: nothing after the saved job
id runs, as with a SIGKILL), and a new worker on a new pool and a new provider instance (a restarted
process) handles the redelivered GenerateShot. It must resume the saved job: the provider saw one
submission, `provider.shot_jobs` holds one job, and one ShotGenerated is in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest
from faststream.nats import NatsMessage
from pydantic import SecretStr

from contracts import GenerateShot, ImageRef, ShotParams
from infra.fakes.fleet import fake_fleet
from infra.runtime import Runtime
from infra.sample import sample_reference_png
from infra.stack import StackEndpoints
from services.provider_adapter.adapters.shot_jobs import PostgresShotJobs
from services.provider_adapter.app import MIGRATIONS, build_providers
from services.provider_adapter.jobs import ProviderWork
from services.provider_adapter.ports import IdentityRequest, Provider, ShotJob, ShotRequest
from services.provider_adapter.providers.fal import FalSettings, fal_provider, identity_for
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim import SimProvider, SimSettings
from services.provider_adapter.settings import ProviderAdapterSettings
from tests.fakes import reference_image
from tests.integration.conftest import FalServer
from tests.integration.test_provider_webhooks import infra_settings
from tests.provider_shots import generate

pytestmark = pytest.mark.integration


class Delivery:
    """What generate_shot reads of a JetStream message: its delivery count; heartbeats are counted."""

    def __init__(self, count: int) -> None:
        self.raw_message = SimpleNamespace(metadata=SimpleNamespace(num_delivered=count))
        self.heartbeats = 0

    async def in_progress(self) -> None:
        self.heartbeats += 1


def delivered(count: int) -> NatsMessage:
    return cast(NatsMessage, Delivery(count))


@pytest.fixture
async def open_runtime(stack_endpoints: StackEndpoints) -> AsyncIterator[Callable[[], Awaitable[Runtime]]]:
    """Open a Runtime (a process's pool, store and broker) on the stack; each call is a new process."""
    opened: list[Runtime] = []

    async def start() -> Runtime:
        runtime = Runtime("provider_adapter", infra_settings(stack_endpoints), migrations=MIGRATIONS)
        await runtime.open()
        await runtime.declare_stream()
        opened.append(runtime)
        return runtime

    yield start
    for runtime in opened:
        await runtime.close()


async def stored_reference(runtime: Runtime) -> ImageRef:
    data = sample_reference_png()
    stored = await runtime.store.put_image("studio", data, "image/png")
    return reference_image(data, key=stored.key).ref


def generate_command(provider: str, identity_ref: str, reference: ImageRef) -> GenerateShot:
    character_id = uuid.uuid4()
    return GenerateShot(
        correlation_id=character_id,
        tenant_id="studio",
        shot_id=uuid.uuid4(),
        character_id=character_id,
        provider=provider,
        identity_ref=identity_ref,
        params=ShotParams(prompt="close-up portrait, soft window light", seed=7),
        references=[reference],
    )


async def jobs_of(runtime: Runtime, shot_id: uuid.UUID) -> list[ShotJob]:
    return await PostgresShotJobs(runtime.pool).all_for(shot_id)


async def shots_generated(runtime: Runtime, shot_id: uuid.UUID) -> int:
    count = await runtime.pool.fetchval(
        "SELECT count(*) FROM messaging.outbox WHERE payload->>'type' = 'ShotGenerated' AND payload->>'shot_id' = $1",
        str(shot_id),
    )
    return int(count)


async def stop_mid_wait(
    runtime: Runtime, work: ProviderWork, command: GenerateShot, still_waiting: Callable[[], bool]
) -> str:
    """Run the first delivery until its job is saved and being waited on, then stop the worker."""
    task = asyncio.create_task(work.generate_shot(command, delivered(1)))
    deadline = time.monotonic() + 20
    while not (await jobs_of(runtime, command.shot_id) and still_waiting()):
        assert not task.done(), "the shot finished before the worker could be stopped: make its job slower"
        assert time.monotonic() < deadline, "no provider job was saved"
        await asyncio.sleep(0.02)
    task.cancel()  # the process stops: nothing more of this delivery runs
    with pytest.raises(asyncio.CancelledError):
        await task
    [job] = await jobs_of(runtime, command.shot_id)
    assert (job.attempt, job.outcome) == (1, None)  # saved, and still running at the provider
    assert await shots_generated(runtime, command.shot_id) == 0
    return job.job_id


async def resume(
    restarted: Runtime, provider: Provider, command: GenerateShot, caplog: pytest.LogCaptureFixture
) -> ProviderWork:
    """The restarted worker handles the redelivered command."""
    work = ProviderWork(restarted, {provider.name: provider}, ProviderAdapterSettings())
    with caplog.at_level(logging.INFO):
        await asyncio.wait_for(work.generate_shot(command, delivered(2)), timeout=60)
    return work


async def check_resumed(
    restarted: Runtime, work: ProviderWork, command: GenerateShot, job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One job, resumed and settled, and one ShotGenerated, even after a late duplicate."""
    [job] = await jobs_of(restarted, command.shot_id)
    assert (job.attempt, job.job_id, job.outcome) == (1, job_id, "succeeded")
    assert await shots_generated(restarted, command.shot_id) == 1
    assert f"resuming {command.provider} job {job_id} (submission 1, still running) instead of submitting again" in (
        caplog.text
    )
    await work.generate_shot(command, delivered(3))  # a late duplicate changes nothing
    assert await shots_generated(restarted, command.shot_id) == 1


async def test_a_sim_shot_stopped_mid_wait_is_resumed_after_a_restart_and_submitted_once(
    open_runtime: Callable[[], Awaitable[Runtime]], caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await open_runtime()
    slow = SimSettings(latency_ms=1500.0, latency_jitter_ms=0.0)
    first = SimProvider(slow)
    reference = await stored_reference(runtime)
    command = generate_command("sim", f"sim:sim-instant_reference-{uuid.uuid4().hex}-0-1000", reference)
    work = ProviderWork(runtime, {"sim": first}, ProviderAdapterSettings())
    job_id = await stop_mid_wait(runtime, work, command, lambda: True)

    restarted, second = await open_runtime(), SimProvider(slow)  # a new process: new pool, new provider
    work = await resume(restarted, second, command, caplog)
    assert (list(first.submitted), list(second.submitted)) == ([job_id], [])  # one submission in all
    await check_resumed(restarted, work, command, job_id, caplog)


async def test_a_fal_shot_stopped_mid_wait_is_resumed_after_a_restart_and_created_once_at_fal(
    open_runtime: Callable[[], Awaitable[Runtime]], fal: FalServer, caplog: pytest.LogCaptureFixture
) -> None:
    fal.fake.queue_position = 25  # a slow queue: 25 status polls to the front

    def adapter() -> Provider:
        settings = FalSettings(key=SecretStr(fal.key), queue_url=fal.url, poll_s=0.05, poll_max_s=0.1)
        client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
        fal.clients.append(client)
        return fal_provider(settings, client, concurrency=2, retry=RetryPolicy(retries=2, base_s=0.05, cap_s=0.2))

    runtime = await open_runtime()
    reference = await stored_reference(runtime)
    provider = adapter()
    command = generate_command(provider.name, identity_for([reference.sha256]), reference)
    work = ProviderWork(runtime, {provider.name: provider}, ProviderAdapterSettings())
    job_id = await stop_mid_wait(runtime, work, command, lambda: fal.fake.status_polls >= 3)
    assert (fal.fake.cancels, fal.fake.in_flight) == (0, 1)  # stopping the worker left the paid request running

    restarted = await open_runtime()
    work = await resume(restarted, adapter(), command, caplog)
    assert (fal.fake.submits, fal.fake.accepted) == (1, 1)  # fal's create endpoint was hit exactly once
    await check_resumed(restarted, work, command, job_id, caplog)


async def test_postgres_refuses_a_second_job_for_the_same_shot_and_submission(
    open_runtime: Callable[[], Awaitable[Runtime]],
) -> None:
    runtime = await open_runtime()
    jobs = PostgresShotJobs(runtime.pool)
    shot_id = uuid.uuid4()
    first = ShotJob(shot_id, 1, "sim", "job-a", submitted_at=_now())
    assert await jobs.record(first, "studio")
    assert not await jobs.record(ShotJob(shot_id, 1, "sim", "job-b", submitted_at=_now()), "studio")
    assert not await jobs.record(ShotJob(shot_id, 2, "sim", "job-c", submitted_at=_now()), "studio")  # 1 still live
    await jobs.settle(shot_id, 1, "job-a", "failed", "runner died")
    assert await jobs.record(ShotJob(shot_id, 2, "sim", "job-c", submitted_at=_now()), "studio")
    assert [(job.attempt, job.job_id, job.outcome) for job in await jobs.all_for(shot_id)] == [
        (1, "job-a", "failed"),
        (2, "job-c", None),
    ]


def _now() -> datetime:
    return datetime.now(UTC)


async def test_the_fake_fleet_counts_the_shot_jobs_each_provider_was_paid_for(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_fleet() as fleet:
        for name, value in fleet.env().items():
            monkeypatch.setenv(name, value)
        providers = build_providers(ProviderAdapterSettings())
        ref = reference_image(sample_reference_png(), key="studio/images/ref")
        character_id = uuid.uuid4()
        await providers["fal-flux-lora"].create_identity(IdentityRequest(character_id, "studio", "lora", [ref]))
        instant = providers["fal-instant-character"]
        identity = await instant.create_identity(IdentityRequest(character_id, "studio", "instant_reference", [ref]))
        request = ShotRequest(uuid.uuid4(), character_id, identity, ShotParams(prompt="portrait", seed=1), [ref])
        assert (await generate(instant, request)).data
        assert fleet.shot_submissions() == {"fal": 1, "leonardo": 0, "astria": 0, "replicate": 0, "comfyui": 0}
        assert fleet.fal.accepted == 2  # the training is not a shot
