"""Connection settings every service shares (env prefix LIKENESS_). Each service adds its own class."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class InfraSettings(BaseSettings):
    """Where NATS, PostgreSQL and the object store are. `likeness up` and `likeness demo` set these."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_", extra="ignore")

    nats_url: str = Field(description="NATS server URL, e.g. nats://127.0.0.1:4222")
    database_url: SecretStr = Field(description="postgresql://user:password@host:port/database")
    s3_endpoint: str = Field(description="host:port of the S3-compatible object store")
    s3_access_key: SecretStr
    s3_secret_key: SecretStr
    s3_bucket: str = "likeness"
    s3_secure: bool = False
    ready_file: Path | None = Field(
        default=None,
        description="Created once the service is consuming, holding its health endpoint's base URL "
        "(http://host:port); the supervisor waits for it.",
    )
    http_host: str = Field(
        default="127.0.0.1", description="Where a worker serves /healthz, /readyz and /metrics (not the gateway)."
    )
    http_port: int = Field(
        default=0, ge=0, le=65535, description="Port for /healthz, /readyz and /metrics; 0 picks a free one."
    )
    log_level: str = "INFO"
    trace_file: Path | None = Field(
        default=None,
        description="Append this service's finished trace spans here as JSON lines (infra/tracing.py); "
        "unset: no spans are written, but trace context still travels with every message.",
    )
    stream_max_age_days: float = Field(
        default=30.0,
        ge=0,
        description="LIKENESS_STREAM_MAX_AGE_DAYS: how long the LIKENESS stream keeps events (0: no age limit). "
        "Replays cannot reach further back.",
    )
    stream_max_bytes: int = Field(
        default=-1,
        ge=-1,
        description="LIKENESS_STREAM_MAX_BYTES: the stream's size limit; the oldest events go first (-1: no limit).",
    )
    consumer_group: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_]*(-[A-Za-z0-9_]+)*$",
        max_length=40,
        description="LIKENESS_CONSUMER_GROUP: read the stream through a separate set of durable consumers, "
        "<durable>--<group>, with claims of their own (a rebuild or reprocessing; see `likeness replay --fresh`).",
    )
    outbox_mode: Literal["publish", "discard"] = Field(
        default="publish",
        description="LIKENESS_OUTBOX_MODE: discard marks outbox rows published without sending them, so an "
        "instance rebuilding its records from history does not announce that history again.",
    )


class StreamRetention(BaseSettings):
    """The stream's retention alone (LIKENESS_STREAM_MAX_AGE_DAYS, LIKENESS_STREAM_MAX_BYTES), for callers of
    `declare_stream` that hold no InfraSettings: every declaration then agrees with the services'."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_STREAM_", extra="ignore")

    max_age_days: float = Field(default=30.0, ge=0)
    max_bytes: int = Field(default=-1, ge=-1)
