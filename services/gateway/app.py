"""The gateway: FastAPI for apps, FastStream (NATS) for publishing their requests as events."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import Mount

from contracts import STREAM_NAME
from infra.bus import create_broker, declare_stream
from infra.db import create_pool
from infra.metrics import bind_service, exposition, record_http
from infra.objects import ObjectStore
from infra.observability import Readiness, consumer_gauges, database_check, nats_check, write_ready_file
from infra.settings import InfraSettings
from infra.tracing import context_from, start_tracing, stop_tracing, tracer
from infra.webhooks.fal import FalKeys
from services.gateway.adapters.api_keys import PostgresApiKeys, migrate_gateway
from services.gateway.adapters.callbacks import PostgresCallbacks
from services.gateway.adapters.read_model import ReadModel
from services.gateway.auth import KeyCheck
from services.gateway.callbacks import router as callbacks_router
from services.gateway.deps import Gateway
from services.gateway.evaluation import router as evaluation_router
from services.gateway.keys import CachedKeys
from services.gateway.outbound import DURABLES as CALLBACK_DURABLES
from services.gateway.outbound import Callbacks
from services.gateway.rate_limit import TokenBuckets
from services.gateway.reference_urls import ReferenceFetcher, reference_fetch_client
from services.gateway.reports import router as reports_router
from services.gateway.routes import router
from services.gateway.settings import GatewaySettings
from services.gateway.signed_urls import UrlSigner
from services.gateway.signed_urls import router as signed_router
from services.gateway.webhooks import router as webhook_router

log = logging.getLogger(__name__)

# The page (services/gateway/static/): public files, no data; it asks for the API key and sends it on each call.
STATIC_DIR = Path(__file__).parent / "static"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

# Multipart overhead allowance on top of the reference limits, for the early Content-Length check.
_FORM_OVERHEAD_BYTES = 1024 * 1024


def create_app(infra: InfraSettings, settings: GatewaySettings) -> FastAPI:
    tenants_by_key = settings.tenants_by_key()  # fail at start-up on a malformed key list
    settings.scorecard()  # ... and on scorecard weights that do not sum to 1
    settings.scorecard_judgements()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bind_service("gateway")
        tracing = start_tracing("gateway", infra.trace_file)  # each request's SERVER span (trace_requests)
        pool = await create_pool(infra.database_url.get_secret_value(), max_size=10)
        await migrate_gateway(pool)
        api_keys = PostgresApiKeys(pool)
        broker = create_broker(infra.nats_url, name="gateway")
        await broker.connect()
        await declare_stream(broker)
        store = ObjectStore.from_settings(infra)
        await store.ensure_bucket()
        reference_client = reference_fetch_client()
        configured = settings.url_signing_key
        url_signing_key = configured.get_secret_value().encode() if configured else secrets.token_bytes(32)
        jwks_client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)
        fal_keys = FalKeys(jwks_client, url=settings.fal_jwks_url, ttl_s=settings.fal_jwks_ttl_s)
        callbacks = Callbacks.from_settings(PostgresCallbacks(pool), settings)
        app.state.gateway = Gateway(
            settings=settings,
            broker=broker,
            store=store,
            read_model=ReadModel(pool),
            fal_keys=fal_keys,
            api_keys=api_keys,
            references=ReferenceFetcher(reference_client, timeout_s=settings.reference_fetch_timeout_s),
            signer=UrlSigner(url_signing_key, settings.signed_url_ttl_s),
            callbacks=callbacks,
        )
        app.state.key_check = KeyCheck(
            tenants_by_key=tenants_by_key,
            stored=CachedKeys(api_keys, ttl_s=settings.key_cache_s),
            rate_limit=TokenBuckets(per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst),
        )
        await callbacks.start(broker.config.connection_state.stream)  # apps' callbacks (outbound.py)
        app.state.readiness = Readiness({"database": database_check(lambda: pool), "nats": nats_check(broker)})
        app.state.refresh_metrics = consumer_gauges(
            broker, lambda: [(STREAM_NAME, durable) for durable in CALLBACK_DURABLES.values()]
        )
        if infra.ready_file is not None:
            write_ready_file(infra.ready_file, f"http://{settings.host}:{settings.port}")
        try:
            yield
        finally:
            app.state.readiness.begin_shutdown()
            await callbacks.stop()
            await broker.stop()
            await pool.close()
            await jwks_client.aclose()
            await reference_client.aclose()
            stop_tracing("gateway", tracing)

    app = FastAPI(
        title="Likeness",
        version="1.0.0",
        description="Keeps a character's identity consistent across AI-generated shots, and measures it.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(evaluation_router)
    app.include_router(reports_router)
    app.include_router(signed_router)
    app.include_router(webhook_router)
    app.include_router(callbacks_router)

    max_body = settings.max_references * settings.max_reference_bytes + _FORM_OVERHEAD_BYTES

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):  # type: ignore[no-untyped-def]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return JSONResponse(
                {"detail": f"request body is {int(declared)} bytes; the limit is {max_body} bytes"},
                status_code=413,
            )
        return await call_next(request)

    @app.middleware("http")
    async def page_security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        if request.url.path == "/ui" or request.url.path.startswith("/ui/"):
            response.headers["Content-Security-Policy"] = PAGE_CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.middleware("http")  # a SERVER span per request: the events a request publishes carry its trace
    async def trace_requests(request: Request, call_next):  # type: ignore[no-untyped-def]
        with tracer("gateway").start_as_current_span(
            f"{request.method} {request.url.path}",
            context=context_from(request.headers),  # an app may send its own traceparent
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.url.path},
        ) as span:
            response = await call_next(request)
            template = route_template(request)
            span.update_name(f"{request.method} {template}")
            span.set_attribute("http.route", template)
            span.set_attribute("http.response.status_code", response.status_code)
            if "character_id" in request.path_params:
                span.set_attribute("likeness.character_id", str(request.path_params["character_id"]))
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    @app.middleware("http")  # outermost: counts what the other middlewares refuse too
    async def count_requests(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        status = 500  # what an exception escaping the app becomes
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:  # the time to the response's start: a streamed body (the SSE feed) is not waited for
            record_http(route_template(request), request.method, status, time.perf_counter() - started)

    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def page() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """200 when the database answers and NATS is connected; 503 naming what is not, or while starting or
        stopping."""
        readiness: Readiness | None = getattr(request.app.state, "readiness", None)
        if readiness is None:
            return JSONResponse({"status": "starting", "checks": {}, "not_ready": ["startup"]}, status_code=503)
        ready, report = await readiness.report()
        return JSONResponse(report, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        refresh = getattr(request.app.state, "refresh_metrics", None)
        if refresh is not None:
            try:
                await refresh()
            except Exception:  # the scrape still answers, with the last figures
                log.warning("refreshing consumer lag failed", exc_info=True)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return app


def route_template(request: Request) -> str:
    """The matched route's path template (`/v1/characters/{character_id}`), never the raw path: bounded labels."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for candidate in request.app.routes:  # a mount (the page) sets no route in the scope
        if isinstance(candidate, Mount) and (
            request.url.path == candidate.path or request.url.path.startswith(candidate.path + "/")
        ):
            return candidate.path
    return "unmatched"
