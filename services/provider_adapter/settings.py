from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderAdapterSettings(BaseSettings):
    """Env prefix LIKENESS_PROVIDER_ADAPTER_. The simulator's knobs are here; real providers come later."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_PROVIDER_ADAPTER_", extra="ignore")

    max_attempts: int = Field(default=5, ge=1, description="Provider calls per shot before it fails.")
    concurrency: int = Field(default=4, ge=1, description="Shots generated at once by one replica.")
    identity_poll_s: float = Field(default=0.5, gt=0)
    identity_timeout_s: float = Field(default=3600.0, gt=0)

    sim_latency_ms: float = Field(default=300.0, ge=0)
    sim_latency_jitter_ms: float = Field(default=100.0, ge=0)
    sim_identity_seconds: float = Field(default=1.0, ge=0)
    sim_failure_rate: float = Field(default=0.0, ge=0, le=1, description="Transient failures per attempt.")
    sim_drift_rate: float = Field(default=0.0, ge=0, le=1, description="Shots that show a different person.")
