"""The provider adapter service: identities and shots from the configured providers."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from infra.runtime import Runtime, worker_app
from infra.settings import InfraSettings
from services.provider_adapter.ports import Provider
from services.provider_adapter.providers.sim import SimProvider, SimSettings
from services.provider_adapter.settings import ProviderAdapterSettings
from services.provider_adapter.subscribers import build_router

MIGRATIONS = Path(__file__).parent / "migrations"


def build_providers(settings: ProviderAdapterSettings) -> dict[str, Provider]:
    sim = SimProvider(
        SimSettings(
            latency_ms=settings.sim_latency_ms,
            latency_jitter_ms=settings.sim_latency_jitter_ms,
            identity_seconds=settings.sim_identity_seconds,
            failure_rate=settings.sim_failure_rate,
            drift_rate=settings.sim_drift_rate,
        )
    )
    return {"sim": sim}


def create_app(settings: InfraSettings, adapter_settings: ProviderAdapterSettings | None = None) -> FastStream:
    adapter_settings = adapter_settings or ProviderAdapterSettings()
    runtime = Runtime("provider_adapter", settings, migrations=MIGRATIONS)
    router = build_router(runtime, build_providers(adapter_settings), adapter_settings)
    return worker_app(runtime, router, title="Likeness provider adapter")
