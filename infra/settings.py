"""Connection settings every service shares (env prefix LIKENESS_). Each service adds its own class."""

from __future__ import annotations

from pathlib import Path

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
