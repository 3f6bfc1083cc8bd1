from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from infra.evidence.scorecard import DEFAULT_QUALITATIVE, QualitativeScores, ScorecardWeights
from infra.webhooks import fal as fal_webhooks

_PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")  # contracts.values.ProviderName


class GatewaySettings(BaseSettings):
    """Env prefix LIKENESS_GATEWAY_."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_GATEWAY_", extra="ignore", validate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: SecretStr = Field(
        description="Comma-separated tenant:key pairs, e.g. 'studio-a:k1,studio-b:k2'. Every call needs a key."
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default=["sim"],
        description="Providers this deployment offers: 'sim,fal-instant-character' or a JSON list. "
        "Offer a real provider only where the provider adapter has its key.",
    )
    max_reference_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_reference_pixels: int = Field(default=40_000_000, gt=0)
    max_references: int = Field(default=20, ge=1, le=20)
    url_signing_key: SecretStr | None = Field(
        default=None,
        description="Signs short-lived image links (at least 16 characters); replicas must share it. Unset: each "
        "gateway process draws its own at start.",
    )
    signed_url_ttl_s: float = Field(default=900.0, gt=0, le=7 * 24 * 3600, description="How long an image link works.")
    report_alpha: float = Field(
        default=0.05, gt=0, lt=0.5, description="Significance level of the reports' provider comparisons."
    )
    scorecard_weights: dict[str, float] = Field(
        default_factory=dict,
        description="JSON: weights laid over the defaults (consistency 0.30, training_time 0.15, "
        "inference_latency 0.20, cost 0.15, integration_effort 0.10, browser_compatibility 0.10); they must sum to 1.",
    )
    scorecard_judgements_override: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("LIKENESS_GATEWAY_SCORECARD_JUDGEMENTS", "scorecard_judgements_override"),
        description='JSON: {"provider": [integration_effort, browser_compatibility]} (0-100, judgements, not '
        "measurements) laid over the default table.",
    )
    reference_fetch_timeout_s: float = Field(
        default=20.0, gt=0, le=300, description="How long fetching one reference given by URL may take."
    )
    events_poll_s: float = Field(default=0.25, gt=0, description="How often the SSE feed looks for new events.")
    # Webhooks (POST /v1/webhooks/<provider>): each provider's own check; unset, its webhooks are refused.
    replicate_webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_GATEWAY_REPLICATE_WEBHOOK_SECRET", "REPLICATE_WEBHOOK_SECRET"),
        description="whsec_... from Replicate's GET /v1/webhooks/default/secret: enables replicate-flux-lora webhooks.",
    )
    astria_callback_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_GATEWAY_ASTRIA_CALLBACK_SECRET", "ASTRIA_CALLBACK_SECRET"),
        description="The key of the HMAC token Astria callback URLs carry: enables astria-tune callbacks.",
    )
    leonardo_webhook_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LIKENESS_GATEWAY_LEONARDO_WEBHOOK_KEY", "LEONARDO_WEBHOOK_KEY"),
        description="The callback key set on the Leonardo API key: enables leonardo-character-reference webhooks.",
    )
    fal_jwks_url: str = Field(
        default=fal_webhooks.JWKS_URL,
        description="Where fal publishes the Ed25519 keys its webhooks are signed with (fetched when one arrives).",
    )
    fal_jwks_ttl_s: float = Field(
        default=fal_webhooks.MAX_JWKS_TTL_S,
        gt=0,
        le=fal_webhooks.MAX_JWKS_TTL_S,
        description="How long fal's keys are kept (fal allows a day at most).",
    )
    webhook_tolerance_s: float = Field(
        default=300.0, gt=0, description="How far a signed webhook's timestamp may be from now (replays)."
    )
    # API keys created with `likeness keys` (schema `gateway`), and the per-key rate limit.
    key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a key looked up in the database is trusted: a revoked key is refused within this.",
    )
    rate_limit_per_minute: float = Field(
        default=600.0,
        ge=0,
        description="Requests a minute each API key may make, per gateway replica (0: no limit).",
    )
    rate_limit_burst: int = Field(default=120, ge=1, description="How many requests a key may make at once.")
    # Callbacks to apps (POST /v1/callbacks): signed deliveries of ShotScored and CharacterCompleted.
    callback_allow_loopback: bool = Field(
        default=False,
        description="Also allow callback URLs on 127.0.0.0/8 and ::1 (tests, local development); never private ranges.",
    )
    callback_timeout_s: float = Field(default=10.0, gt=0, le=60, description="How long one delivery attempt may take.")
    callback_max_attempts: int = Field(default=10, ge=1, le=50, description="Attempts before a delivery is failed.")
    callback_backoff_s: float = Field(
        default=10.0, gt=0, description="Wait after the first failed attempt; x3 after each further one (+-20%)."
    )
    callback_backoff_max_s: float = Field(default=3600.0, gt=0, description="The longest wait between attempts.")
    callback_poll_s: float = Field(default=1.0, gt=0, description="How often each replica looks for due deliveries.")
    callback_concurrency: int = Field(default=8, ge=1, le=100, description="Deliveries in flight per replica.")

    @field_validator("replicate_webhook_secret", "astria_callback_secret", "leonardo_webhook_key", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("providers", mode="before")
    @classmethod
    def _provider_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            names = json.loads(text) if text.startswith("[") else [part.strip() for part in text.split(",")]
            value = [name for name in names if name]
        if isinstance(value, list):
            bad = [name for name in value if not isinstance(name, str) or not _PROVIDER_NAME.match(name)]
            if bad or not value:
                raise ValueError(f"provider names are lowercase words such as 'sim' (got {value!r})")
        return value

    def scorecard(self) -> ScorecardWeights:
        """The scorecard's weights: the research's defaults with `SCORECARD_WEIGHTS` laid over them."""
        return ScorecardWeights(**{**ScorecardWeights().as_dict(), **self.scorecard_weights})

    def scorecard_judgements(self) -> dict[str, QualitativeScores]:
        """Integration effort and browser compatibility per provider: the default table, then `SCORECARD_JUDGEMENTS`."""
        table = dict(DEFAULT_QUALITATIVE)
        for provider, (integration, browser) in self.scorecard_judgements_override.items():
            table[provider] = QualitativeScores(integration_effort=integration, browser_compatibility=browser)
        return table

    def tenants_by_key(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for item in self.api_keys.get_secret_value().split(","):
            tenant, sep, key = item.strip().partition(":")
            if not sep or not tenant or len(key) < 8:
                raise ValueError("LIKENESS_GATEWAY_API_KEYS must be 'tenant:key' pairs, keys at least 8 characters")
            pairs[key] = tenant
        return pairs
