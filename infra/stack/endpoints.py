"""Where a running stack's NATS, PostgreSQL and object store are: what services and tests are told."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StackEndpoints:
    """Addresses and credentials of one running stack (embedded, containers, or compose)."""

    nats_url: str
    database_url: str  # postgresql://user:password@127.0.0.1:port/likeness
    s3_endpoint: str  # host:port, no scheme (what the minio client takes)
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str = "likeness"
    s3_secure: bool = False

    def env(self) -> dict[str, str]:
        """The LIKENESS_* variables a child process reads (infra.settings.InfraSettings)."""
        return {
            "LIKENESS_NATS_URL": self.nats_url,
            "LIKENESS_DATABASE_URL": self.database_url,
            "LIKENESS_S3_ENDPOINT": self.s3_endpoint,
            "LIKENESS_S3_ACCESS_KEY": self.s3_access_key,
            "LIKENESS_S3_SECRET_KEY": self.s3_secret_key,
            "LIKENESS_S3_BUCKET": self.s3_bucket,
            "LIKENESS_S3_SECURE": "true" if self.s3_secure else "false",
        }

    def __repr__(self) -> str:  # keep the secrets out of logs and tracebacks
        return (
            f"StackEndpoints(nats_url={self.nats_url!r}, database_url='postgresql://...', "
            f"s3_endpoint={self.s3_endpoint!r}, s3_bucket={self.s3_bucket!r}, s3_secure={self.s3_secure})"
        )
