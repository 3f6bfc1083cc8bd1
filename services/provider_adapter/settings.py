from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# fal's list prices, USD per megapixel of output, by model (provider-contracts.md section 1, read
# on FAL_PRICES_AS_OF). Prices change: check fal.ai/pricing and override LIKENESS_PROVIDER_ADAPTER_FAL_PRICES.
FAL_PRICES_AS_OF = "2026-11-24"
# fal-ai/flux/dev/redux: no published figure the research could confirm; Flux Dev's $0.025/MP assumed.
FAL_PRICES = {"fal-ai/instant-character": 0.10, "fal-ai/flux-lora": 0.035, "fal-ai/flux/dev/redux": 0.025}
# fal-ai/flux-lora-fast-training, USD per run: DISPUTED. Most sources say about $2 a run (~1000 steps);
# third-party notes say $0.002 or $0.02 a step (provider-contracts.md section 1, read on FAL_PRICES_AS_OF).
FAL_TRAINING_USD_PER_RUN = 2.0


class ProviderAdapterSettings(BaseSettings):
    """Env prefix LIKENESS_PROVIDER_ADAPTER_: retries and pacing, the simulator's knobs, real providers' keys."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_PROVIDER_ADAPTER_", extra="ignore", validate_by_name=True)

    max_attempts: int = Field(default=5, ge=1, description="Provider calls per shot before it fails.")
    concurrency: int = Field(default=4, ge=1, description="Shots generated at once by one replica.")
    identity_poll_s: float = Field(default=0.5, gt=0)
    identity_timeout_s: float = Field(default=3600.0, gt=0)

    sim_latency_ms: float = Field(default=300.0, ge=0)
    sim_latency_jitter_ms: float = Field(default=100.0, ge=0)
    sim_identity_seconds: float = Field(default=1.0, ge=0)
    sim_failure_rate: float = Field(default=0.0, ge=0, le=1, description="Transient failures per attempt.")
    sim_drift_rate: float = Field(default=0.0, ge=0, le=1, description="Shots that show a different person.")

    # HTTP providers: every call has these time-outs; 429, 5xx and network errors are retried in the
    # call `http_retries` times (backoff doubling from `http_backoff_s`), then by the job's own retry.
    http_connect_timeout_s: float = Field(default=5.0, gt=0)
    http_read_timeout_s: float = Field(default=60.0, gt=0, description="Also the write time-out (uploads).")
    http_retries: int = Field(default=3, ge=0, le=10)
    http_backoff_s: float = Field(default=0.5, ge=0)
    http_backoff_max_s: float = Field(default=8.0, ge=0)
    http_max_retry_after_s: float = Field(
        default=30.0, ge=0, description="A longer Retry-After is waited out by the job's retry, not in the call."
    )

    fal_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_FAL_KEY", "FAL_KEY"),
        description="fal.ai API key (key_id:key_secret); the fal providers are offered only when set.",
    )
    fal_queue_url: str = Field(default="https://queue.fal.run", description="fal's queue host (a fake's in tests).")
    fal_concurrency: int = Field(default=2, ge=1, description="fal requests in flight at once (accounts start at 2).")
    fal_poll_s: float = Field(default=0.5, gt=0, description="First status poll interval; it grows to fal_poll_max_s.")
    fal_poll_max_s: float = Field(default=5.0, gt=0)
    fal_timeout_s: float = Field(default=900.0, gt=0, description="Give up (and cancel) a request not done by then.")
    fal_prices: dict[str, float] = Field(
        default_factory=lambda: dict(FAL_PRICES), description=f"USD per megapixel by model, as of {FAL_PRICES_AS_OF}."
    )
    fal_prices_as_of: str = FAL_PRICES_AS_OF
    fal_training_steps: int = Field(default=1000, ge=1, le=10000, description="fal-flux-lora training steps.")
    fal_training_usd_per_run: float = Field(
        default=FAL_TRAINING_USD_PER_RUN,
        ge=0,
        description=f"fal-flux-lora training price per run; disputed (about $2 as of {FAL_PRICES_AS_OF}).",
    )

    @field_validator("fal_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("fal_prices")
    @classmethod
    def _priced(cls, value: dict[str, float]) -> dict[str, float]:
        missing = set(FAL_PRICES) - set(value)
        if missing or any(price < 0 for price in value.values()):
            raise ValueError(f"needs a price of zero or more for each of {sorted(FAL_PRICES)}, got {value}")
        return value

    @field_validator("fal_queue_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")) or len(value.rstrip("/")) <= len("https://"):
            raise ValueError(f"must be an http(s) URL such as https://queue.fal.run, got {value!r}")
        return value.rstrip("/")
