"""The provider adapter's subscribers: references -> identity, shot requests -> provider calls."""

from __future__ import annotations

from faststream.nats import NatsMessage, NatsRouter

from contracts import GenerateShot, ProviderWebhookReceived, ReferencesStored, RetakeShot, ShotRequested
from infra.bus import settle, subscribe
from infra.runtime import Runtime
from services.provider_adapter.jobs import ProviderWork
from services.provider_adapter.ports import Provider
from services.provider_adapter.settings import ProviderAdapterSettings
from services.provider_adapter.webhooks import WebhookWork


def build_router(runtime: Runtime, providers: dict[str, Provider], settings: ProviderAdapterSettings) -> NatsRouter:
    router = NatsRouter()
    work = ProviderWork(runtime, providers, settings)
    webhooks = WebhookWork(runtime, providers, work.weights)

    @subscribe(router, ReferencesStored, "provider-references-stored", ack_wait_s=30.0, max_deliver=100)
    async def on_references_stored(event: ReferencesStored, msg: NatsMessage) -> None:
        await settle(msg, event, work.build_identity(event, msg))

    @subscribe(router, ShotRequested, "provider-shot-requested")
    async def on_shot_requested(event: ShotRequested, msg: NatsMessage) -> None:
        await settle(msg, event, work.route_shot(event))

    @subscribe(
        router,
        GenerateShot,
        "provider-generate-shot",
        max_deliver=settings.max_attempts + 5,
        max_workers=settings.concurrency,
    )
    async def on_generate_shot(command: GenerateShot, msg: NatsMessage) -> None:
        await settle(msg, command, work.generate_shot(command, msg))

    @subscribe(router, RetakeShot, "provider-retake-shot", ack_wait_s=30.0)
    async def on_retake_shot(retake: RetakeShot, msg: NatsMessage) -> None:
        await settle(msg, retake, work.retake_shot(retake, msg))

    @subscribe(router, ProviderWebhookReceived, "provider-webhook-received")
    async def on_provider_webhook(webhook: ProviderWebhookReceived, msg: NatsMessage) -> None:
        await settle(msg, webhook, webhooks.act_on(webhook))

    return router
