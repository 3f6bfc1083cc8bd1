"""A provider's circuit breaker on the real stack: fal (its loopback fake) fails, the breaker opens, and new
shots go to the fallback provider (`sim`), recorded as rerouted; a job already submitted is never moved; with
no fallback, new shots wait out the cool-down instead of failing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from infra.bus import RetryLater
from infra.fakes.faults import Fault
from infra.metrics import REGISTRY
from infra.runtime import Runtime
from infra.stack import StackEndpoints
from services.provider_adapter.adapters.shot_jobs import PostgresShotJobs
from services.provider_adapter.app import MIGRATIONS
from services.provider_adapter.jobs import ProviderWork
from services.provider_adapter.ports import Provider, ShotJob, ShotRequest
from services.provider_adapter.providers.fal import FalSettings, fal_provider, identity_for
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim import SimProvider, SimSettings
from services.provider_adapter.settings import ProviderAdapterSettings
from tests.integration.conftest import FalServer
from tests.integration.test_provider_webhooks import infra_settings
from tests.integration.test_shot_resume import delivered, generate_command, jobs_of, stored_reference

pytestmark = pytest.mark.integration

FAL = "fal-instant-character"


@pytest.fixture
async def runtime(stack_endpoints: StackEndpoints) -> AsyncIterator[Runtime]:
    opened = Runtime("provider_adapter", infra_settings(stack_endpoints), migrations=MIGRATIONS)
    await opened.open()
    await opened.declare_stream()
    yield opened
    await opened.close()


def providers(fal: FalServer) -> dict[str, Provider]:
    settings = FalSettings(key=SecretStr(fal.key), queue_url=fal.url, poll_s=0.05, poll_max_s=0.1)
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    fal.clients.append(client)
    adapter = fal_provider(settings, client, concurrency=2, retry=RetryPolicy(retries=0, base_s=0.01, cap_s=0.02))
    sim = SimProvider(SimSettings(latency_ms=10.0, latency_jitter_ms=0.0, identity_seconds=0.0))
    return {FAL: adapter, "sim": sim}


def adapter_settings(**fields: Any) -> ProviderAdapterSettings:
    return ProviderAdapterSettings(breaker_failures=2, breaker_cool_down_s=60.0, identity_poll_s=0.05, **fields)


async def generated(runtime: Runtime, shot_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await runtime.pool.fetch(
        "SELECT payload FROM messaging.outbox WHERE payload->>'type' = 'ShotGenerated' AND payload->>'shot_id' = $1",
        str(shot_id),
    )
    return [dict(row["payload"]) for row in rows]


async def open_the_breaker(runtime: Runtime, work: ProviderWork, fal: FalServer, make: Callable[[], Any]) -> None:
    fal.fake.inject("submit", Fault.unavailable(), Fault.unavailable())
    for _ in range(2):
        with pytest.raises(RetryLater):
            await work.generate_shot(make(), delivered(1))
    assert work.breakers[FAL].state == "open"
    assert REGISTRY.get_sample_value("likeness_breaker_state", {"provider": FAL}) == 2


async def test_an_open_breaker_sends_new_shots_to_the_fallback_and_never_moves_a_submitted_job(
    runtime: Runtime, fal: FalServer
) -> None:
    reference = await stored_reference(runtime)

    def command() -> Any:
        return generate_command(FAL, identity_for([reference.sha256]), reference)

    work = ProviderWork(runtime, providers(fal), adapter_settings(fallback={FAL: "sim"}))
    # a shot whose job an earlier delivery submitted at fal (and saved) before the breaker opened
    in_flight = command()
    request = ShotRequest(
        in_flight.shot_id,
        in_flight.character_id,
        in_flight.identity_ref,
        in_flight.params,
        await work.load_references(in_flight.references),
    )
    job_id = await work.providers[FAL].start_shot(request)
    await PostgresShotJobs(runtime.pool).record(
        ShotJob(in_flight.shot_id, 1, FAL, job_id, datetime.now(UTC)), in_flight.tenant_id
    )
    await open_the_breaker(runtime, work, fal, command)
    submits = fal.fake.submits

    await work.generate_shot(in_flight, delivered(2))  # resumed at fal, breaker or not: never moved, never resubmitted
    [event] = await generated(runtime, in_flight.shot_id)
    assert (event["provider"], event["rerouted_from"]) == (FAL, None)
    assert fal.fake.submits == submits

    shot = command()
    await work.generate_shot(shot, delivered(1))
    [event] = await generated(runtime, shot.shot_id)
    assert (event["provider"], event["rerouted_from"], event["take"]) == ("sim", FAL, 1)
    assert event["simulation"]["simulated"] is True
    [job] = await jobs_of(runtime, shot.shot_id)
    assert (job.provider, job.outcome) == ("sim", "succeeded")
    assert fal.fake.submits == submits  # nothing new reached fal while its breaker was open
    fallback_identity = await runtime.pool.fetchval(
        "SELECT identity_ref FROM provider.fallback_identities WHERE character_id=$1 AND provider='sim'",
        shot.character_id,
    )
    assert str(fallback_identity).startswith("sim:")

    # a redelivery to a restarted adapter (its breakers closed) stays with the job the shot has: sim's
    restarted = ProviderWork(runtime, providers(fal), adapter_settings(fallback={FAL: "sim"}))
    assert restarted.breakers[FAL].allow()
    routed, rerouted_from = await restarted.route(shot, delivered(2))
    assert (getattr(routed, "provider", None), getattr(routed, "identity_ref", ""), rerouted_from) == (
        "sim",
        fallback_identity,
        FAL,
    )


async def test_with_no_fallback_new_shots_wait_out_the_cool_down(runtime: Runtime, fal: FalServer) -> None:
    reference = await stored_reference(runtime)

    def command() -> Any:
        return generate_command(FAL, identity_for([reference.sha256]), reference)

    work = ProviderWork(runtime, providers(fal), adapter_settings())
    await open_the_breaker(runtime, work, fal, command)
    submits = fal.fake.submits
    shot = command()
    with pytest.raises(RetryLater) as waited:
        await work.generate_shot(shot, delivered(1))
    assert 59.0 <= waited.value.delay_s <= 60.0
    assert "circuit breaker is open" in str(waited.value)
    assert (await jobs_of(runtime, shot.shot_id), await generated(runtime, shot.shot_id)) == ([], [])
    assert fal.fake.submits == submits
