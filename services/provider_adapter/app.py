"""The provider adapter service: identities and shots from the configured providers."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import httpx
from faststream import FastStream

from infra.runtime import Runtime, worker_app
from infra.settings import InfraSettings
from services.provider_adapter.ports import Provider
from services.provider_adapter.providers import fal_flux_lora, fal_redux
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
        providers[PROVIDER_NAME] = fal_provider(
            fal, client, concurrency=settings.fal_concurrency, retry=retry_policy(settings)
        )
        flux_lora = fal_flux_lora.FluxLoraSettings(
            **{
                **asdict(fal),
                "model": fal_flux_lora.MODEL,
                "usd_per_megapixel": settings.fal_prices[fal_flux_lora.MODEL],
            },
            training_steps=settings.fal_training_steps,
            training_usd_per_run=settings.fal_training_usd_per_run,
        )
        providers[fal_flux_lora.PROVIDER_NAME] = fal_flux_lora.flux_lora_provider(
            flux_lora, client, concurrency=settings.fal_concurrency, retry=retry_policy(settings)
        )
        redux = replace(fal, model=fal_redux.MODEL, usd_per_megapixel=settings.fal_prices[fal_redux.MODEL])
        providers[fal_redux.PROVIDER_NAME] = fal_redux.redux_provider(
            redux, client, concurrency=settings.fal_concurrency, retry=retry_policy(settings)
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
