"""The provider adapter's subscribers: references -> identity, shot requests -> provider calls."""

from __future__ import annotations

import io

from faststream.nats import NatsMessage, NatsRouter
from PIL import Image

from contracts import (
    GenerateShot,
    IdentityFailed,
    IdentityProgress,
    ImageRef,
    ReferencesStored,
    ShotFailed,
    ShotRequested,
)
from infra.bus import RetryLater, backoff_s, delivery_count, publish_event, settle, subscribe
from infra.runtime import Runtime
from services.provider_adapter import handlers
from services.provider_adapter.adapters.identities import PostgresIdentities
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityStatus,
    PermanentProviderError,
    Provider,
    ReferenceImage,
    TransientProviderError,
)
from services.provider_adapter.settings import ProviderAdapterSettings


def build_router(runtime: Runtime, providers: dict[str, Provider], settings: ProviderAdapterSettings) -> NatsRouter:
    router = NatsRouter()

    async def load_references(refs: list[ImageRef]) -> list[ReferenceImage]:
        return [ReferenceImage(ref=ref, data=await runtime.store.get(ref.key)) for ref in refs]

    async def build_identity(event: ReferencesStored, msg: NatsMessage) -> None:
        consumer = runtime.delivery.consumer("references-stored")
        if await runtime.delivery.is_processed(event, consumer):
            return
        provider = providers.get(event.provider)
        if provider is None or not provider.available():
            async with runtime.delivery.unit_of_work(event, consumer) as work:
                if not work.already_done:
                    reason = f"provider {event.provider!r} is not configured here (known: {sorted(providers)})"
                    work.emit(
                        IdentityFailed.follow(
                            event, character_id=event.character_id, provider=event.provider, reason=reason
                        )
                    )
            return
        async with runtime.pool.acquire() as conn, conn.transaction():
            identities = PostgresIdentities(conn)
            await identities.lock(event.character_id, event.tenant_id)
            await identities.begin(event.character_id, event.provider, event.strategy, event.references)
            job_id = (await identities.lock(event.character_id, event.tenant_id)).job_id

        async def heartbeat(percent: float, message: str) -> None:
            await msg.in_progress()
            progress = IdentityProgress.follow(
                event,
                key=f"{percent:.0f}",
                character_id=event.character_id,
                provider=event.provider,
                percent=percent,
                message=message,
            )
            await publish_event(runtime.broker, progress)

        try:
            if job_id is None:  # first attempt: submit, and remember the job before waiting on it
                request = handlers.identity_request(event, await load_references(event.references))
                job_id = await provider.create_identity(request)
                async with runtime.pool.acquire() as conn:
                    await PostgresIdentities(conn).set_job_id(event.character_id, job_id)
            status = await handlers.wait_for_identity(
                provider,
                job_id,
                poll_s=settings.identity_poll_s,
                timeout_s=settings.identity_timeout_s,
                heartbeat=heartbeat,
            )
        except PermanentProviderError as refused:  # retrying cannot help: the identity fails, with the reason
            status = IdentityStatus(state="failed", reason=f"the provider refused the identity: {refused}")
        async with runtime.delivery.unit_of_work(event, consumer) as work:
            if work.already_done:
                return
            work.emit(
                *await handlers.identity_settled(
                    event, status, identities=PostgresIdentities(work.conn), simulated=provider.simulated
                )
            )

    async def route_shot(event: ShotRequested) -> None:
        async with runtime.delivery.unit_of_work(event, runtime.delivery.consumer("shot-requested")) as work:
            if not work.already_done:
                work.emit(*await handlers.on_shot_requested(event, identities=PostgresIdentities(work.conn)))

    async def store_image(tenant_id: str, image: GeneratedImage) -> ImageRef:
        """Copy the provider's image into our object storage (idempotent: content-addressed)."""
        stored = await runtime.store.put_image(tenant_id, image.data, image.content_type)
        with Image.open(io.BytesIO(image.data)) as decoded:
            width, height = decoded.size
        return ImageRef(
            key=stored.key,
            sha256=stored.sha256,
            content_type=image.content_type,
            width=width,
            height=height,
            size_bytes=stored.size_bytes,
        )

    async def generate_shot(command: GenerateShot, msg: NatsMessage) -> None:
        consumer = runtime.delivery.consumer("generate-shot")
        if await runtime.delivery.is_processed(command, consumer):
            return
        attempt = delivery_count(msg)
        provider = providers.get(command.provider)
        outcome: GeneratedImage | ShotFailed
        if provider is None:
            outcome = handlers.shot_failed(command, command, "generation", f"unknown provider {command.provider!r}")
        else:
            try:
                outcome = await handlers.generate(
                    command,
                    provider=provider,
                    references=await load_references(command.references),
                    attempt=attempt,
                    max_attempts=settings.max_attempts,
                )
            except TransientProviderError as error:
                raise RetryLater(str(error), delay_s=error.retry_after_s or backoff_s(attempt)) from error
        stored = None if isinstance(outcome, ShotFailed) else await store_image(command.tenant_id, outcome)
        async with runtime.delivery.unit_of_work(command, consumer) as work:
            if work.already_done:
                return
            if isinstance(outcome, ShotFailed):
                work.emit(outcome)
            else:
                assert stored is not None
                work.emit(handlers.shot_generated(command, outcome, stored, attempt))

    @subscribe(router, ReferencesStored, "provider-references-stored", ack_wait_s=30.0, max_deliver=100)
    async def on_references_stored(event: ReferencesStored, msg: NatsMessage) -> None:
        await settle(msg, event, build_identity(event, msg))

    @subscribe(router, ShotRequested, "provider-shot-requested")
    async def on_shot_requested(event: ShotRequested, msg: NatsMessage) -> None:
        await settle(msg, event, route_shot(event))

    @subscribe(
        router,
        GenerateShot,
        "provider-generate-shot",
        max_deliver=settings.max_attempts + 5,
        max_workers=settings.concurrency,
    )
    async def on_generate_shot(command: GenerateShot, msg: NatsMessage) -> None:
        await settle(msg, command, generate_shot(command, msg))

    return router
