"""What every worker service holds while it runs: pool, object store, outbox relay, broker.

`worker_app` wires it into a FastStream app: resources open in the lifespan (nothing connects
at import time), the relay starts once the broker is up, and the ready file is written last, holding
the URL of the service's health endpoint (/healthz, /readyz, /metrics: infra/observability.py), which
serves from the start of the lifespan to its end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from faststream import FastStream
from faststream.nats import NatsBroker, NatsRouter
from faststream.specification import AsyncAPI
from opentelemetry.sdk.trace import TracerProvider

from infra.bus import create_broker, declare_stream, keep_stream_order, relay_publisher, use_consumer_group
from infra.db import create_pool, migrate_service
from infra.dead_letters import DeadLetterMiddleware
from infra.delivery import Delivery, OutboxRelay
from infra.metrics import bind_service
from infra.objects import ObjectStore
from infra.observability import (
    HealthServer,
    Readiness,
    consumer_gauges,
    database_check,
    durable_consumers,
    flag_check,
    nats_check,
    write_ready_file,
)
from infra.settings import InfraSettings
from infra.tracing import start_tracing, stop_tracing

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, service: str, settings: InfraSettings, *, migrations: Path | None) -> None:
        self.service = service
        self.settings = settings
        self.migrations = migrations
        # routers built from this runtime (after it) declare <durable>--<group> under a consumer group
        use_consumer_group(settings.consumer_group)
        dead_letters = DeadLetterMiddleware(
            service,
            lambda: self.pool,
            lambda subject, body, headers: relay_publisher(self.broker)(subject, body, headers),
        )
        self.broker: NatsBroker = create_broker(settings.nats_url, name=service, dead_letters=dead_letters)
        self._pool: asyncpg.Pool | None = None
        self._delivery: Delivery | None = None
        self._tracing: TracerProvider | None = None
        self.store = ObjectStore.from_settings(settings)
        self.consuming = False  # set once the broker's subscribers run, cleared when shutdown begins
        readiness = Readiness(
            {
                "database": database_check(lambda: self._pool),
                "nats": nats_check(self.broker),
                "consuming": flag_check(lambda: self.consuming),
            }
        )
        self.health = HealthServer(
            readiness,
            host=settings.http_host,
            port=settings.http_port,
            before_scrape=consumer_gauges(self.broker, lambda: durable_consumers(self.broker)),
        )

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "runtime not open"
        return self._pool

    @property
    def delivery(self) -> Delivery:
        assert self._delivery is not None, "runtime not open"
        return self._delivery

    async def open(self) -> None:
        self._tracing = start_tracing(self.service, self.settings.trace_file)  # spans of consumed messages
        self._pool = await create_pool(self.settings.database_url.get_secret_value())
        await migrate_service(self._pool, self.service, self.migrations)
        await self.store.ensure_bucket()
        relay = OutboxRelay(
            self._pool, self.service, relay_publisher(self.broker), discard=self.settings.outbox_mode == "discard"
        )
        self._delivery = Delivery(self._pool, self.service, relay, group=self.settings.consumer_group)

    async def declare_stream(self) -> None:
        await self.broker.connect()
        await declare_stream(
            self.broker, max_age_days=self.settings.stream_max_age_days, max_bytes=self.settings.stream_max_bytes
        )
        if self.settings.consumer_group:  # a group reads history: its consumers keep the stream's order
            keep_stream_order(self.settings.consumer_group, self.broker.config.connection_state.stream)

    async def close(self) -> None:
        if self._delivery is not None:
            await self._delivery.relay.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._tracing is not None:
            stop_tracing(self.service, self._tracing)  # writes the spans still buffered
            self._tracing = None


def worker_app(
    runtime: Runtime,
    router: NatsRouter,
    *,
    title: str,
    load: Callable[[], Awaitable[None]] | None = None,
) -> FastStream:
    """`load` runs once in the lifespan before consuming starts (models, caches)."""
    runtime.broker.include_router(router)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        bind_service(runtime.service)  # the `service` label of the metrics this app's tasks record
        await runtime.health.start()  # /healthz answers while starting; /readyz says what is missing
        try:
            await runtime.open()
            if load is not None:
                await load()
            await runtime.declare_stream()
            try:
                yield
            finally:
                await runtime.close()
        finally:
            await runtime.health.stop()

    app = FastStream(
        runtime.broker,
        lifespan=lifespan,
        logger=log,
        specification=AsyncAPI(title=title, version="1.0.0", description=f"Likeness {runtime.service} service"),
    )

    @app.after_startup
    async def started() -> None:
        runtime.delivery.relay.start()
        runtime.consuming = True
        if runtime.settings.ready_file is not None:
            write_ready_file(runtime.settings.ready_file, runtime.health.url)
        log.info("%s ready; health and metrics at %s", runtime.service, runtime.health.url)

    @app.on_shutdown
    async def stopping() -> None:
        runtime.consuming = False
        runtime.health.begin_shutdown()  # /readyz is 503 from here on
        await runtime.delivery.relay.stop()

    return app
