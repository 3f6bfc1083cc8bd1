"""The same stack on real images, through testcontainers: nats:2.10 (-js), postgres:16, minio/minio.

Selected in tests with LIKENESS_TEST_BACKEND=docker. It needs a Docker engine that answers; having a
`docker` command is not enough (one exists on machines with no engine), so `docker_engine_problem()`
pings the engine.
"""

from __future__ import annotations

import secrets
from types import TracebackType
from typing import TYPE_CHECKING

from infra.stack.endpoints import StackEndpoints
from infra.stack.objectstore import BUCKET, ensure_bucket

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

NATS_IMAGE = "nats:2.10"
POSTGRES_IMAGE = "postgres:16"
MINIO_IMAGE = "minio/minio"
DATABASE = "likeness"
DB_USER = "likeness"


def docker_engine_problem(timeout: float = 3.0) -> str | None:
    """None when a Docker engine answers a ping; otherwise why not, in words fit for a skip reason."""
    try:
        import docker  # type: ignore[import-untyped]  # no type information ships with docker-py
    except ImportError:
        return "the docker package is not installed (it comes with testcontainers)"
    try:
        client = docker.from_env(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Docker engine answers a ping ({type(exc).__name__}: {exc})"
    return None


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "::1") else host


class ContainerStack:
    """NATS, PostgreSQL and MinIO containers with fresh credentials; removed again on stop()."""

    def __init__(
        self, *, nats_image: str = NATS_IMAGE, postgres_image: str = POSTGRES_IMAGE, minio_image: str = MINIO_IMAGE
    ) -> None:
        self.nats_image = nats_image
        self.postgres_image = postgres_image
        self.minio_image = minio_image
        self._containers: list[DockerContainer] = []
        self._endpoints: StackEndpoints | None = None

    @property
    def endpoints(self) -> StackEndpoints:
        if self._endpoints is None:
            raise RuntimeError("the container stack is not running; call start() first")
        return self._endpoints

    def start(self) -> StackEndpoints:
        if self._endpoints is not None:
            return self._endpoints
        problem = docker_engine_problem()
        if problem is not None:
            raise RuntimeError(problem)
        from testcontainers.community.minio import MinioContainer
        from testcontainers.community.nats import NatsContainer
        from testcontainers.community.postgres import PostgresContainer

        password = secrets.token_hex(16)
        access_key = "LK" + secrets.token_hex(9).upper()
        secret_key = secrets.token_urlsafe(30)
        nats = NatsContainer(self.nats_image, jetstream=True)
        postgres = PostgresContainer(
            self.postgres_image, username=DB_USER, password=password, dbname=DATABASE, driver=None
        )
        minio = MinioContainer(self.minio_image, access_key=access_key, secret_key=secret_key)
        # Current MinIO reads MINIO_ROOT_*; the container class sets the older MINIO_ACCESS_KEY/SECRET_KEY.
        minio.with_env("MINIO_ROOT_USER", access_key).with_env("MINIO_ROOT_PASSWORD", secret_key)
        try:
            for container in (nats, postgres, minio):
                container.start()
                self._containers.append(container)
            nats_host, nats_port = nats.nats_host_and_port()
            pg_host = _loopback(postgres.get_container_host_ip())
            pg_port = postgres.get_exposed_port(postgres.port)
            s3_host = _loopback(minio.get_container_host_ip())
            s3_port = minio.get_exposed_port(minio.port)
            endpoints = StackEndpoints(
                nats_url=f"nats://{_loopback(nats_host)}:{nats_port}",
                database_url=f"postgresql://{DB_USER}:{password}@{pg_host}:{pg_port}/{DATABASE}",
                s3_endpoint=f"{s3_host}:{s3_port}",
                s3_access_key=access_key,
                s3_secret_key=secret_key,
                s3_bucket=BUCKET,
            )
            from minio import Minio

            ensure_bucket(Minio(endpoints.s3_endpoint, access_key, secret_key, secure=False), BUCKET)
        except BaseException:
            self.stop()
            raise
        self._endpoints = endpoints
        return endpoints

    def stop(self) -> None:
        while self._containers:
            self._containers.pop().stop()
        self._endpoints = None

    def __enter__(self) -> ContainerStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
