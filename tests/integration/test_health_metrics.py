"""Health, readiness and metrics on the real stack: a worker as its own process, a worker shutting down
in-process, and the gateway."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from faststream.nats import NatsMessage, NatsRouter
from nats.js.api import DeliverPolicy
from pydantic import SecretStr

from contracts import STREAM_NAME, ShotParams, ShotRequested
from infra.bus import publish_event, settle, subscribe
from infra.processes import ServiceSet, read_ready_file
from infra.runtime import Runtime, worker_app
from infra.stack import StackEndpoints
from services.gateway.app import create_app as create_gateway
from services.gateway.outbound import DURABLES as CALLBACK_DURABLES
from services.gateway.settings import GatewaySettings
from tests.integration.test_provider_webhooks import infra_settings

pytestmark = pytest.mark.integration

STORAGE_DURABLES = (
    "storage-character-requested",
    "storage-identity-progress",
    "storage-identity-ready",
    "storage-identity-failed",
    "storage-shot-requested",
    "storage-shot-generated",
    "storage-shot-scored",
    "storage-human-vote",
    "storage-shot-failed",
)


async def eventually_status(
    client: httpx.AsyncClient, path: str, status: int, timeout_s: float = 10.0
) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        response = await client.get(path)
        if response.status_code == status or asyncio.get_running_loop().time() > deadline:
            return response
        await asyncio.sleep(0.05)


async def test_a_worker_process_serves_health_readiness_and_its_consumers_lag(
    stack_endpoints: StackEndpoints, tmp_path: Path
) -> None:
    services = ServiceSet(tmp_path, stack_endpoints.env())
    try:
        services.start("storage")
        await asyncio.to_thread(services.wait_ready, ["storage"], 120.0)
        urls = services.urls()
        assert list(urls) == ["storage"]
        assert urls["storage"].startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=urls["storage"], timeout=10.0) as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "nats": "ok", "consuming": "ok"}
            scraped = await client.get("/metrics")
        assert scraped.status_code == 200
        for durable in STORAGE_DURABLES:
            assert f'likeness_consumer_lag{{consumer="{durable}",stream="{STREAM_NAME}"}}' in scraped.text, durable
            assert f'likeness_consumer_ack_pending{{consumer="{durable}",stream="{STREAM_NAME}"}}' in scraped.text
        assert "gateway-callbacks" not in scraped.text  # only this service's consumers
    finally:
        codes = services.stop_all()
    assert codes == {"storage": 0}, services.running


async def test_readiness_turns_503_as_soon_as_a_worker_begins_shutting_down(
    stack_endpoints: StackEndpoints, tmp_path: Path
) -> None:
    """While a message is still being handled (the broker waits for it), /readyz already says no."""
    durable = f"health-test-{secrets.token_hex(4)}"
    character_id = uuid.uuid4()
    entered, release = asyncio.Event(), asyncio.Event()
    router = NatsRouter()

    @subscribe(router, ShotRequested, durable, deliver_policy=DeliverPolicy.NEW)
    async def on_shot(event: ShotRequested, msg: NatsMessage) -> None:
        async def work() -> None:
            if event.correlation_id == character_id:
                entered.set()
                await release.wait()

        await settle(msg, event, work())

    settings = infra_settings(stack_endpoints).model_copy(update={"ready_file": tmp_path / "worker.ready"})
    runtime = Runtime(f"healthtest{secrets.token_hex(3)}", settings, migrations=None)
    app = worker_app(runtime, router, title="health test")
    async with app.lifespan_context():
        await app.start()
        url = read_ready_file(tmp_path / "worker.ready")
        assert url is not None
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            assert (await client.get("/readyz")).status_code == 200
            scraped = (await client.get("/metrics")).text
            assert f'likeness_consumer_lag{{consumer="{durable}",stream="{STREAM_NAME}"}}' in scraped

            shot = ShotRequested(
                correlation_id=character_id,
                tenant_id="studio",
                shot_id=uuid.uuid4(),
                character_id=character_id,
                params=ShotParams(prompt="held"),
            )
            await publish_event(runtime.broker, shot)
            await asyncio.wait_for(entered.wait(), timeout=20)
            stopping = asyncio.create_task(app.stop())
            try:
                response = await eventually_status(client, "/readyz", 503)
                assert response.status_code == 503
                assert response.json()["status"] == "shutting down"
                assert (await client.get("/healthz")).status_code == 200  # alive while it finishes
            finally:
                release.set()
                await stopping
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


@pytest.fixture
async def gateway(stack_endpoints: StackEndpoints) -> AsyncIterator[httpx.AsyncClient]:
    app = create_gateway(
        infra_settings(stack_endpoints), GatewaySettings(api_keys=SecretStr(f"studio:{secrets.token_hex(12)}"))
    )
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://g") as client:
        yield client


async def test_gateway_readyz_checks_the_database_and_nats_without_a_key(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "nats": "ok"}


async def test_gateway_readyz_is_503_before_start_and_after_shutdown(stack_endpoints: StackEndpoints) -> None:
    app = create_gateway(
        infra_settings(stack_endpoints), GatewaySettings(api_keys=SecretStr(f"studio:{secrets.token_hex(12)}"))
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        assert (await client.get("/readyz")).status_code == 503
        async with app.router.lifespan_context(app):
            assert (await client.get("/readyz")).status_code == 200
        after = await client.get("/readyz")
    assert after.status_code == 503
    assert after.json()["status"] == "shutting down"


async def test_gateway_metrics_count_requests_by_route_template_and_show_callback_lag(
    gateway: httpx.AsyncClient,
) -> None:
    missing = uuid.uuid4()
    assert (await gateway.get(f"/v1/characters/{missing}")).status_code == 401  # no key
    assert (await gateway.get("/healthz")).status_code == 200
    response = await gateway.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert 'likeness_http_requests_total{method="GET",route="/v1/characters/{character_id}",status="401"}' in text
    assert str(missing) not in text  # templates, never raw paths
    assert 'likeness_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'likeness_http_request_seconds_count{method="GET",route="/healthz"}' in text
    for durable in CALLBACK_DURABLES.values():
        assert f'likeness_consumer_lag{{consumer="{durable}",stream="{STREAM_NAME}"}}' in text
    openapi = (await gateway.get("/openapi.json")).json()
    assert "/metrics" not in openapi["paths"]
    assert "/readyz" not in openapi["paths"]
