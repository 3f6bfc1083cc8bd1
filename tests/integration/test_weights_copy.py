"""Trained weights a provider hands out are copied into our object storage when the identity is ready.

A stub provider reports a ready identity whose weights lie on a loopback file server; the copy runs
through `ProviderWork.build_identity` against the real stack (PostgreSQL, the S3 server, NATS).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest
from faststream.nats import NatsMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contracts import ReferencesStored
from infra.bus import RetryLater
from infra.fakes.server import LoopbackServer
from infra.runtime import Runtime
from infra.safe_fetch import Resolve
from infra.sample import sample_reference_png
from infra.stack import StackEndpoints
from services.provider_adapter.adapters.identities import PostgresIdentities
from services.provider_adapter.app import MIGRATIONS
from services.provider_adapter.artifacts import WeightsCopier
from services.provider_adapter.jobs import ProviderWork
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    ProgressCallback,
    ShotRequest,
    WeightsFile,
)
from services.provider_adapter.providers.http import http_timeout
from services.provider_adapter.settings import ProviderAdapterSettings
from tests.fakes import reference_image
from tests.integration.test_provider_webhooks import infra_settings

pytestmark = pytest.mark.integration

WEIGHTS = b"fake LoRA weights, not a model: " + bytes(range(256)) * 64


class Files:
    """A loopback file server: serves WEIGHTS, or fails with `status` while `failures` last."""

    def __init__(self) -> None:
        self.failures = 0
        self.status = 503
        self.requests = 0
        self.app = Starlette(routes=[Route("/files/{name}", self.file)])

    async def file(self, request: Request) -> Response:
        self.requests += 1
        if self.failures > 0:
            self.failures -= 1
            return Response(b"busy", status_code=self.status)
        return Response(WEIGHTS, media_type="application/octet-stream")


class StubTrainer:
    """A provider whose identity is ready at once, with weights at `weights_url`."""

    name = "stub-trainer"
    simulated = True

    def __init__(self, weights_url: str, trusted_origin: str | None) -> None:
        self.weights = WeightsFile(url=weights_url, file_name="w.safetensors", trusted_origin=trusted_origin)

    def available(self) -> bool:
        return True

    async def create_identity(self, request: IdentityRequest) -> str:
        return f"{self.name}:job-1"

    async def identity_status(self, job_id: str) -> IdentityStatus:
        return IdentityStatus(state="ready", percent=100.0, identity_ref=f"{self.name}:lora", weights=self.weights)

    async def start_shot(self, request: ShotRequest) -> str:
        raise NotImplementedError

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        raise NotImplementedError


class NoHeartbeat:
    async def in_progress(self) -> None:
        return None


@pytest.fixture
async def runtime(stack_endpoints: StackEndpoints) -> AsyncIterator[Runtime]:
    runtime = Runtime("provider_adapter", infra_settings(stack_endpoints), migrations=MIGRATIONS)
    await runtime.open()
    await runtime.declare_stream()
    yield runtime
    await runtime.close()


async def references_stored(runtime: Runtime, provider: str) -> ReferencesStored:
    reference = sample_reference_png()
    stored = await runtime.store.put_image("studio", reference, "image/png")
    character_id = uuid.uuid4()
    return ReferencesStored(
        correlation_id=character_id,
        tenant_id="studio",
        character_id=character_id,
        strategy="lora",
        provider=provider,
        references=[reference_image(reference, key=stored.key).ref],
    )


async def ready_payloads(runtime: Runtime, character_id: uuid.UUID) -> list[dict[str, object]]:
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT payload FROM messaging.outbox
               WHERE payload->>'character_id' = $1 AND subject = 'likeness.identity.ready.v1'""",
            str(character_id),
        )
    return [row["payload"] for row in rows]


def work_with(runtime: Runtime, provider: StubTrainer, resolve: Resolve | None = None) -> ProviderWork:
    work = ProviderWork(runtime, {provider.name: provider}, ProviderAdapterSettings(identity_poll_s=0.1))
    if resolve is not None:
        work.weights = WeightsCopier(
            runtime.store, timeout=http_timeout(connect_s=2.0, read_s=5.0), max_bytes=10**7, resolve=resolve
        )
    return work


async def test_weights_are_copied_once_and_a_provider_outage_retries_instead_of_losing_them(runtime: Runtime) -> None:
    files = Files()
    with LoopbackServer(files.app, name="files") as url:
        provider = StubTrainer(f"{url}/files/w.safetensors", trusted_origin=url)
        work = work_with(runtime, provider)
        event = await references_stored(runtime, provider.name)
        files.failures = 1  # the CDN is down once: the message comes back later, nothing is settled
        with pytest.raises(RetryLater):
            await work.build_identity(event, cast(NatsMessage, NoHeartbeat()))
        assert await ready_payloads(runtime, event.character_id) == []
        async with runtime.pool.acquire() as conn:
            pending = await PostgresIdentities(conn).lock(event.character_id, "studio")
        assert (pending.status, pending.job_id) == ("pending", f"{provider.name}:job-1")
        await work.build_identity(event, cast(NatsMessage, NoHeartbeat()))  # the redelivery: polled, copied
        await work.build_identity(event, cast(NatsMessage, NoHeartbeat()))  # a duplicate: nothing more

    [ready] = await ready_payloads(runtime, event.character_id)
    weights = cast(dict[str, object], ready["weights"])
    sha256 = hashlib.sha256(WEIGHTS).hexdigest()
    assert weights == {
        "key": f"studio/artifacts/{sha256}",
        "sha256": sha256,
        "size_bytes": len(WEIGHTS),
        "content_type": "application/octet-stream",
        "file_name": "w.safetensors",
    }
    assert await runtime.store.get(f"studio/artifacts/{sha256}") == WEIGHTS
    assert files.requests == 2  # the failed try and the copy; the duplicate fetched nothing


async def test_weights_on_a_private_address_are_not_fetched_and_the_identity_is_still_ready(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    connected: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        connected.append(host)  # resolved, never connected: the answer is private
        return ["10.0.0.8"]

    provider = StubTrainer("https://weights.provider.example/files/w.safetensors", trusted_origin=None)
    work = work_with(runtime, provider, resolve)
    event = await references_stored(runtime, provider.name)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(work.build_identity(event, cast(NatsMessage, NoHeartbeat())), timeout=30)

    [ready] = await ready_payloads(runtime, event.character_id)
    assert ready["weights"] is None  # shots still work from the provider's copy
    assert connected == ["weights.provider.example"]
    assert "without our copy of its weights" in caplog.text
    assert "non-public address" in caplog.text
