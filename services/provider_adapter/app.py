"""The provider adapter service: identities and shots from the configured providers."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, replace
from pathlib import Path

import httpx
from faststream import FastStream

from infra.runtime import Runtime, worker_app
from infra.settings import InfraSettings
from services.provider_adapter.ports import Provider
from services.provider_adapter.providers import (
    astria,
    comfyui,
    comfyui_workflows,
    fal_flux_lora,
    fal_redux,
    leonardo,
    replicate,
)
from services.provider_adapter.providers.fal import MODEL, PROVIDER_NAME, FalSettings, fal_provider
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim import SimProvider, SimSettings
from services.provider_adapter.settings import ProviderAdapterSettings
from services.provider_adapter.subscribers import build_router

MIGRATIONS = Path(__file__).parent / "migrations"


def http_client(settings: ProviderAdapterSettings) -> httpx.AsyncClient:
    """The one client every HTTP provider shares (connects on first use, closed at shutdown)."""
    return new_client(http_timeout(connect_s=settings.http_connect_timeout_s, read_s=settings.http_read_timeout_s))


def retry_policy(settings: ProviderAdapterSettings) -> RetryPolicy:
    return RetryPolicy(
        retries=settings.http_retries,
        base_s=settings.http_backoff_s,
        cap_s=max(settings.http_backoff_s, settings.http_backoff_max_s),
        max_retry_after_s=settings.http_max_retry_after_s,
    )


def webhook_url(settings: ProviderAdapterSettings, provider: str) -> str | None:
    """Where `provider` should call us back: the gateway's webhook route, if its URL is configured."""
    base = settings.webhook_base_url
    return f"{base.rstrip('/')}/v1/webhooks/{provider}" if base else None


def build_providers(settings: ProviderAdapterSettings, client: httpx.AsyncClient | None = None) -> dict[str, Provider]:
    """`sim` always; each real provider only where its key is configured, on `client`.

    Without a `client` (documents and tests that never call a provider), one is made for them.
    """
    sim = SimProvider(
        SimSettings(
            latency_ms=settings.sim_latency_ms,
            latency_jitter_ms=settings.sim_latency_jitter_ms,
            identity_seconds=settings.sim_identity_seconds,
            failure_rate=settings.sim_failure_rate,
            drift_rate=settings.sim_drift_rate,
        )
    )
    providers: dict[str, Provider] = {"sim": sim}
    fal = FalSettings(
        key=settings.fal_key,
        queue_url=settings.fal_queue_url,
        usd_per_megapixel=settings.fal_prices[MODEL],
        poll_s=settings.fal_poll_s,
        poll_max_s=max(settings.fal_poll_s, settings.fal_poll_max_s),
        timeout_s=settings.fal_timeout_s,
    )
    if fal.configured:
        client = client or http_client(settings)
        fal_slots = asyncio.Semaphore(settings.fal_concurrency)  # one account: one limit for every fal adapter
        providers[PROVIDER_NAME] = fal_provider(
            fal, client, concurrency=settings.fal_concurrency, retry=retry_policy(settings), slots=fal_slots
        )
        flux_lora = fal_flux_lora.FluxLoraSettings(
            **{
                **asdict(fal),
                "model": fal_flux_lora.MODEL,
                "usd_per_megapixel": settings.fal_prices[fal_flux_lora.MODEL],
                # only trainings are worth a webhook: shots finish by polling (their webhooks are only logged)
                "webhook_url": webhook_url(settings, fal_flux_lora.PROVIDER_NAME),
            },
            training_steps=settings.fal_training_steps,
            training_usd_per_run=settings.fal_training_usd_per_run,
        )
        providers[fal_flux_lora.PROVIDER_NAME] = fal_flux_lora.flux_lora_provider(
            flux_lora, client, concurrency=settings.fal_concurrency, retry=retry_policy(settings), slots=fal_slots
        )
        redux = replace(fal, model=fal_redux.MODEL, usd_per_megapixel=settings.fal_prices[fal_redux.MODEL])
        providers[fal_redux.PROVIDER_NAME] = fal_redux.redux_provider(
            redux, client, concurrency=settings.fal_concurrency, retry=retry_policy(settings), slots=fal_slots
        )
    leonardo_settings = leonardo.LeonardoSettings(
        api_key=settings.leonardo_api_key,
        base_url=settings.leonardo_base_url,
        model_id=settings.leonardo_model_id,
        preprocessor_id=settings.leonardo_preprocessor_id,
        strength=settings.leonardo_strength,
        credits_per_image=settings.leonardo_credits_per_image,
        usd_per_api_credit=settings.leonardo_usd_per_api_credit,
        poll_s=settings.leonardo_poll_s,
        poll_max_s=max(settings.leonardo_poll_s, settings.leonardo_poll_max_s),
        timeout_s=settings.leonardo_timeout_s,
    )
    if leonardo_settings.configured:
        client = client or http_client(settings)
        providers[leonardo.PROVIDER_NAME] = leonardo.leonardo_provider(
            leonardo_settings, client, concurrency=settings.leonardo_concurrency, retry=retry_policy(settings)
        )
    astria_settings = astria.AstriaSettings(
        api_key=settings.astria_api_key,
        base_url=settings.astria_base_url,
        base_tune_id=settings.astria_base_tune_id,
        model_type=settings.astria_model_type,
        class_name=settings.astria_class_name,
        trigger_word=settings.astria_trigger_word,
        preset=settings.astria_preset,
        usd_per_tune=settings.astria_usd_per_tune,
        usd_per_image=settings.astria_usd_per_image,
        poll_s=settings.astria_poll_s,
        poll_max_s=max(settings.astria_poll_s, settings.astria_poll_max_s),
        timeout_s=settings.astria_timeout_s,
        training_timeout_s=settings.astria_training_timeout_s,
        callback_base_url=webhook_url(settings, astria.PROVIDER_NAME),
        callback_secret=settings.astria_callback_secret,
    )
    if astria_settings.configured:
        client = client or http_client(settings)
        providers[astria.PROVIDER_NAME] = astria.astria_provider(
            astria_settings, client, concurrency=settings.astria_concurrency, retry=retry_policy(settings)
        )
    replicate_settings = replicate.ReplicateSettings(
        token=settings.replicate_api_token,
        base_url=settings.replicate_base_url,
        trainer_owner=settings.replicate_trainer_owner,
        trainer_model=settings.replicate_trainer_model,
        trainer_version=settings.replicate_trainer_version,
        destination_owner=settings.replicate_destination_owner,
        destination_model=settings.replicate_destination_model,
        training_steps=settings.replicate_training_steps,
        usd_per_gpu_second=settings.replicate_usd_per_gpu_second,
        training_usd_per_run=settings.replicate_training_usd_per_run,
        usd_per_image=settings.replicate_usd_per_image,
        poll_s=settings.replicate_poll_s,
        poll_max_s=max(settings.replicate_poll_s, settings.replicate_poll_max_s),
        timeout_s=settings.replicate_timeout_s,
        webhook_url=webhook_url(settings, replicate.PROVIDER_NAME),
    )
    if replicate_settings.configured:
        client = client or http_client(settings)
        providers[replicate.PROVIDER_NAME] = replicate.replicate_provider(
            replicate_settings, client, concurrency=settings.replicate_concurrency, retry=retry_policy(settings)
        )
    comfy = comfyui_workflows.ComfyUISettings(
        base_url=settings.comfyui_url,
        token=settings.comfyui_token,
        ipadapter_checkpoint=settings.comfyui_ipadapter_checkpoint,
        ipadapter_preset=settings.comfyui_ipadapter_preset,
        instantid_checkpoint=settings.comfyui_instantid_checkpoint,
        instantid_model=settings.comfyui_instantid_model,
        instantid_controlnet=settings.comfyui_instantid_controlnet,
        face_analysis_provider=settings.comfyui_face_analysis_provider,
        reference_only_checkpoint=settings.comfyui_reference_only_checkpoint,
        sampler=settings.comfyui_sampler,
        scheduler=settings.comfyui_scheduler,
        usd_per_gpu_second=settings.comfyui_usd_per_gpu_second,
        poll_s=settings.comfyui_poll_s,
        poll_max_s=max(settings.comfyui_poll_s, settings.comfyui_poll_max_s),
        timeout_s=settings.comfyui_timeout_s,
        ws_connect_s=settings.comfyui_ws_connect_s,
    )
    if comfy.configured:
        client = client or http_client(settings)
        providers.update(
            comfyui.comfyui_providers(
                comfy, client, concurrency=settings.comfyui_concurrency, retry=retry_policy(settings)
            )
        )
    return providers


def create_app(settings: InfraSettings, adapter_settings: ProviderAdapterSettings | None = None) -> FastStream:
    adapter_settings = adapter_settings or ProviderAdapterSettings()
    runtime = Runtime("provider_adapter", settings, migrations=MIGRATIONS)
    client = http_client(adapter_settings)
    router = build_router(runtime, build_providers(adapter_settings, client), adapter_settings)
    app = worker_app(runtime, router, title="Likeness provider adapter")

    @app.after_shutdown
    async def close_http_client() -> None:
        await client.aclose()

    return app
