from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.provider_adapter.providers import astria, leonardo, replicate

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
    fallback_identity_timeout_s: float = Field(
        default=60.0, gt=0, description="A fallback (instant-reference) identity not ready by then fails its take."
    )
    fallback: dict[str, str] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_FALLBACK", "LIKENESS_FALLBACK", "fallback"),
        description="Provider -> instant-reference fallback provider (JSON): where new shots go while a provider's "
        "circuit breaker is open. The same variable as storage's consistency gate reads.",
    )
    # A circuit breaker per provider, in each process (replicas keep their own): see breaker.py.
    breaker_failures: int = Field(
        default=5, ge=0, description="Consecutive transient failures that open a breaker; 0: no breakers."
    )
    breaker_window_s: float = Field(default=60.0, gt=0, description="The failure-rate window.")
    breaker_window_min_calls: int = Field(default=10, ge=1, description="Calls in the window before its rate counts.")
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1, description="Failed share that opens a breaker.")
    breaker_cool_down_s: float = Field(default=30.0, gt=0, description="Open this long, then one trial shot.")

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
    webhook_base_url: str | None = Field(
        default=None,
        description="The gateway's public URL. Set, Replicate trainings and Astria tunes and prompts are told to "
        "call <it>/v1/webhooks/<provider> when done (polling still runs: whichever comes first settles the job).",
    )
    weights_max_bytes: int = Field(
        default=4 * 1024**3,
        gt=0,
        description="The largest trained-weights file copied into our storage (a Flux LoRA is tens to hundreds of MB).",
    )
    astria_callback_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_ASTRIA_CALLBACK_SECRET", "ASTRIA_CALLBACK_SECRET"),
        description="Signs the token in Astria's callback URLs; the gateway checks it with the same secret.",
    )
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

    leonardo_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_LEONARDO_API_KEY", "LEONARDO_API_KEY"),
        description="Leonardo.ai API key; leonardo-character-reference is offered only when set.",
    )
    leonardo_base_url: str = Field(default=leonardo.BASE_URL, description="Leonardo's REST base (a fake's in tests).")
    leonardo_model_id: str = Field(default=leonardo.KINO_XL, description="An SDXL model (Leonardo Kino XL).")
    leonardo_preprocessor_id: int = Field(
        default=leonardo.CHARACTER_REFERENCE_SDXL,
        description="Character Reference: 133 on SDXL, 397 on Phoenix (unverified).",
    )
    leonardo_strength: Literal["Low", "Mid", "High"] = "High"
    leonardo_concurrency: int = Field(default=4, ge=1, le=10, description="Leonardo allows 10 jobs at once.")
    leonardo_poll_s: float = Field(default=1.0, gt=0)
    leonardo_poll_max_s: float = Field(default=5.0, gt=0)
    leonardo_timeout_s: float = Field(default=300.0, gt=0)
    leonardo_credits_per_image: float = Field(
        default=leonardo.CREDITS_PER_IMAGE, ge=0, description="Used only when a submit reports no apiCreditCost."
    )
    leonardo_usd_per_api_credit: float = Field(
        default=leonardo.USD_PER_API_CREDIT,
        ge=0,
        description=f"UNVERIFIED estimate as of {leonardo.LEONARDO_PRICES_AS_OF}.",
    )
    leonardo_webhook_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_LEONARDO_WEBHOOK_KEY", "LEONARDO_WEBHOOK_KEY"),
        description="The callback key set on the Leonardo API key (webhooks, not wired yet).",
    )

    astria_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_ASTRIA_API_KEY", "ASTRIA_API_KEY"),
        description="Astria API key (sd_...); astria-tune is offered only when set.",
    )
    astria_base_url: str = Field(default=astria.BASE_URL, description="Astria's API (a fake's in tests).")
    astria_base_tune_id: int = Field(default=astria.FLUX1_DEV, description="Gallery base tune (1504944: Flux1.dev).")
    astria_model_type: Literal["lora", "pti", "faceid", "checkpoint"] = "lora"
    astria_class_name: str = Field(default="person", description="Astria's tune name: man, woman, person, ...")
    astria_trigger_word: str = Field(default="ohwx", description="The tune's token, named in every prompt.")
    astria_preset: str | None = Field(default=None, description="e.g. flux-lora-portrait; None: Astria's default.")
    astria_concurrency: int = Field(default=2, ge=1, description="Astria jobs in flight at once (no published limit).")
    astria_usd_per_tune: float = Field(
        default=astria.USD_PER_TUNE, ge=0, description=f"UNVERIFIED, stale snapshot of {astria.ASTRIA_PRICES_AS_OF}."
    )
    astria_usd_per_image: float = Field(
        default=astria.USD_PER_IMAGE,
        ge=0,
        description=f"UNVERIFIED, stale snapshot as of {astria.ASTRIA_PRICES_AS_OF}.",
    )
    astria_poll_s: float = Field(default=2.0, gt=0)
    astria_poll_max_s: float = Field(default=15.0, gt=0)
    astria_timeout_s: float = Field(default=600.0, gt=0, description="One prompt, submit to images.")
    astria_training_timeout_s: float = Field(default=14400.0, gt=0, description="A tune untrained by then fails.")

    replicate_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_REPLICATE_API_TOKEN", "REPLICATE_API_TOKEN"),
        description="Replicate API token (r8_...); replicate-flux-lora is offered only when set with a destination.",
    )
    replicate_base_url: str = Field(default=replicate.BASE_URL, description="Replicate's API (a fake's in tests).")
    replicate_trainer_owner: str = "ostris"
    replicate_trainer_model: str = "flux-dev-lora-trainer"
    replicate_trainer_version: str = Field(
        default=replicate.TRAINER_VERSION, description="UNVERIFIED: check the trainer's page."
    )
    replicate_destination_owner: str = Field(default="", description="Your Replicate user or organisation.")
    replicate_destination_model: str = Field(default="", description="An existing model trainings push versions to.")
    replicate_training_steps: int = Field(default=1000, ge=3, le=6000)
    replicate_usd_per_gpu_second: float = Field(
        default=replicate.USD_PER_H100_SECOND, ge=0, description=f"H100, as of {replicate.REPLICATE_PRICES_AS_OF}."
    )
    replicate_training_usd_per_run: float = Field(
        default=replicate.TRAINING_USD_PER_RUN, ge=0, description="Estimate, used only when a training reports no time."
    )
    replicate_usd_per_image: float = Field(
        default=replicate.USD_PER_IMAGE, ge=0, description="Estimate, used only when a prediction has no predict_time."
    )
    replicate_webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_REPLICATE_WEBHOOK_SECRET", "REPLICATE_WEBHOOK_SECRET"),
        description="whsec_... from GET /v1/webhooks/default/secret (webhooks, not routed yet).",
    )
    replicate_concurrency: int = Field(default=4, ge=1)
    replicate_poll_s: float = Field(default=1.0, gt=0)
    replicate_poll_max_s: float = Field(default=5.0, gt=0)
    replicate_timeout_s: float = Field(default=300.0, gt=0, description="One shot; a prediction not done is cancelled.")

    comfyui_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_COMFYUI_URL", "COMFYUI_URL"),
        description="A self-hosted ComfyUI (http://host:8188); the comfyui-* providers are offered only when set.",
    )
    comfyui_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_PROVIDER_ADAPTER_COMFYUI_TOKEN", "COMFYUI_TOKEN"),
        description="Bearer token for a proxy in front of ComfyUI (ComfyUI itself has no auth).",
    )
    comfyui_concurrency: int = Field(default=2, ge=1, description="Prompts in flight (ComfyUI runs one at a time).")
    comfyui_ipadapter_checkpoint: str = "sd_xl_base_1.0.safetensors"
    comfyui_ipadapter_preset: str = "PLUS FACE (portraits)"
    comfyui_instantid_checkpoint: str = "sd_xl_base_1.0.safetensors"
    comfyui_instantid_model: str = "ip-adapter.bin"
    comfyui_instantid_controlnet: str = "instantid/diffusion_pytorch_model.safetensors"
    comfyui_face_analysis_provider: str = "CPU"
    comfyui_reference_only_checkpoint: str = "sd_xl_base_1.0.safetensors"
    comfyui_sampler: str = "dpmpp_2m"
    comfyui_scheduler: str = "karras"
    comfyui_usd_per_gpu_second: float = Field(default=0.0, ge=0, description="0: self-hosted shots are free.")
    comfyui_poll_s: float = Field(default=0.5, gt=0)
    comfyui_poll_max_s: float = Field(default=3.0, gt=0)
    comfyui_timeout_s: float = Field(default=600.0, gt=0)
    comfyui_ws_connect_s: float = Field(default=5.0, gt=0)

    @field_validator(
        "fal_key",
        "leonardo_api_key",
        "leonardo_webhook_key",
        "astria_api_key",
        "comfyui_url",
        "comfyui_token",
        mode="before",
    )
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

    @field_validator("fal_queue_url", "leonardo_base_url", "astria_base_url", "replicate_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")) or len(value.rstrip("/")) <= len("https://"):
            raise ValueError(f"must be an http(s) URL such as https://queue.fal.run, got {value!r}")
        return value.rstrip("/")
