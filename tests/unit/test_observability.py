"""Health, readiness and metrics: the worker endpoint on loopback, and what the metrics count."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from contracts import IdentityReady, ImageRef, ShotGenerated
from infra import metrics
from infra.metrics import REGISTRY, bind_service, record_handled
from infra.observability import HealthServer, Readiness, database_check, write_ready_file
from infra.processes import read_ready_file, service_urls
from services.provider_adapter.ports import TransientProviderError
from services.provider_adapter.providers.http import ProviderHttp, ProviderKeyAuth, ProviderRefused, RetryPolicy
from services.storage.subscribers import count_cost
from tests.fakes import RecordingSleep

METRIC_NAMES = (
    "likeness_messages_total",
    "likeness_handler_seconds",
    "likeness_consumer_lag",
    "likeness_consumer_ack_pending",
    "likeness_provider_calls_total",
    "likeness_provider_call_seconds",
    "likeness_provider_cost_usd_total",
    "likeness_scoring_seconds",
    "likeness_http_requests_total",
    "likeness_http_request_seconds",
)


class Switches:
    """Readiness checks a test flips."""

    def __init__(self) -> None:
        self.database = False
        self.nats = False

    async def database_ok(self) -> bool:
        return self.database

    async def nats_ok(self) -> bool:
        return self.nats


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthServer, Switches, httpx.AsyncClient]]:
    switches = Switches()
    server = HealthServer(Readiness({"database": switches.database_ok, "nats": switches.nats_ok}))
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as client:
        yield server, switches, client
    await server.stop()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_it_listens_on_loopback_on_a_free_port(served: tuple[HealthServer, Switches, httpx.AsyncClient]) -> None:
    server, _, _ = served
    assert server.url.startswith("http://127.0.0.1:")
    assert int(server.url.rsplit(":", 1)[1]) > 0


async def test_healthz_answers_even_while_not_ready(served: tuple[HealthServer, Switches, httpx.AsyncClient]) -> None:
    _, _, client = served
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_names_what_is_not_ready_and_flips_with_the_checks(
    served: tuple[HealthServer, Switches, httpx.AsyncClient],
) -> None:
    _, switches, client = served
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["database", "nats"]

    switches.database = True
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["nats"]
    assert response.json()["checks"] == {"database": "ok", "nats": "failed"}

    switches.nats = True
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "nats": "ok"}, "not_ready": []}

    switches.database = False  # the database goes away
    assert (await client.get("/readyz")).status_code == 503


async def test_readyz_is_503_once_shutdown_begins_even_with_every_check_passing(
    served: tuple[HealthServer, Switches, httpx.AsyncClient],
) -> None:
    server, switches, client = served
    switches.database = switches.nats = True
    assert (await client.get("/readyz")).status_code == 200
    server.begin_shutdown()
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "shutting down"
    assert (await client.get("/healthz")).status_code == 200  # alive until the process ends


async def test_a_check_that_raises_or_hangs_is_not_ready_with_its_reason() -> None:
    async def raises() -> bool:
        raise ConnectionRefusedError("database away")

    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    ready, body = await Readiness({"database": raises, "nats": hangs}, timeout_s=0.05).report()
    assert not ready
    assert body["checks"] == {"database": "error: ConnectionRefusedError", "nats": "timed out"}


class AnsweringPool:
    """Stands in for asyncpg.Pool: answers SELECT 1 with `answer`, or raises it."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.queries: list[str] = []

    async def fetchval(self, query: str) -> object:
        self.queries.append(query)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


async def test_the_database_check_passes_only_when_the_pool_answers_select_1() -> None:
    answering = AnsweringPool(1)
    checks = {
        "not_open": database_check(lambda: None),
        "refused": database_check(lambda: AnsweringPool(ConnectionRefusedError())),
        "answering": database_check(lambda: answering),
    }
    ready, body = await Readiness(checks).report()
    assert not ready
    assert body["checks"] == {"not_open": "failed", "refused": "error: ConnectionRefusedError", "answering": "ok"}
    assert answering.queries == ["SELECT 1"]


async def test_metrics_serves_the_prometheus_text_with_every_likeness_metric(
    served: tuple[HealthServer, Switches, httpx.AsyncClient],
) -> None:
    _, _, client = served
    metrics.record_consumer_state("LIKENESS", "unit-durable", pending=7, ack_pending=2)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in response.text, name
    assert 'likeness_consumer_lag{consumer="unit-durable",stream="LIKENESS"} 7.0' in response.text
    assert 'likeness_consumer_ack_pending{consumer="unit-durable",stream="LIKENESS"} 2.0' in response.text
    assert "process_resident_memory_bytes" in response.text


async def test_metrics_refreshes_before_each_scrape_and_still_answers_when_that_fails() -> None:
    durable = f"refresh-{secrets.token_hex(4)}"
    scrapes = 0

    async def refresh() -> None:
        nonlocal scrapes
        scrapes += 1
        if scrapes == 2:
            raise ConnectionError("NATS away")
        metrics.record_consumer_state("LIKENESS", durable, pending=scrapes, ack_pending=0)

    server = HealthServer(Readiness({}), before_scrape=refresh)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert f'consumer="{durable}",stream="LIKENESS"}} 1.0' in (await client.get("/metrics")).text
            second = await client.get("/metrics")
            assert second.status_code == 200
            assert f'consumer="{durable}",stream="LIKENESS"}} 1.0' in second.text  # the last figure
            assert f'consumer="{durable}",stream="LIKENESS"}} 3.0' in (await client.get("/metrics")).text
    finally:
        await server.stop()


async def test_unknown_paths_and_methods_are_refused(served: tuple[HealthServer, Switches, httpx.AsyncClient]) -> None:
    _, _, client = served
    assert (await client.get("/nothing")).status_code == 404
    assert (await client.post("/readyz")).status_code == 405
    assert (await client.get("/healthz?probe=1")).status_code == 200


async def test_a_stopped_server_refuses_connections() -> None:
    server = HealthServer(Readiness({}))
    await server.start()
    url = server.url
    await server.stop()
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


async def test_a_garbled_request_gets_400_and_the_server_keeps_serving(
    served: tuple[HealthServer, Switches, httpx.AsyncClient],
) -> None:
    server, _, client = served
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"nonsense\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert (await client.get("/healthz")).status_code == 200


def test_record_handled_counts_by_service_consumer_and_outcome() -> None:
    service, durable = f"svc-{secrets.token_hex(3)}", f"durable-{secrets.token_hex(3)}"
    bind_service(service)
    record_handled(durable, "acked", 0.2)
    record_handled(durable, "acked", 0.3)
    record_handled(durable, "retried", 0.1)
    labels = {"service": service, "consumer": durable}
    assert sample("likeness_messages_total", {**labels, "outcome": "acked"}) == 2
    assert sample("likeness_messages_total", {**labels, "outcome": "retried"}) == 1
    assert sample("likeness_handler_seconds_count", labels) == 3
    assert sample("likeness_handler_seconds_sum", labels) == pytest.approx(0.6)


def test_write_ready_file_holds_the_url_and_service_urls_reads_it(tmp_path: Path) -> None:
    write_ready_file(tmp_path / "run" / "storage.ready", "http://127.0.0.1:43121")
    (tmp_path / "run" / "scoring.ready").touch()  # an older service: exists, holds no URL
    assert read_ready_file(tmp_path / "run" / "storage.ready") == "http://127.0.0.1:43121"
    assert read_ready_file(tmp_path / "run" / "gateway.ready") is None
    assert service_urls(tmp_path) == {"storage": "http://127.0.0.1:43121"}
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["scoring.ready", "storage.ready"]


# provider calls: ProviderHttp counts each logical call once, by how it ended


def provider_http(provider: str, handler: httpx.MockTransport) -> ProviderHttp:
    auth = ProviderKeyAuth(SecretStr("k"), scheme="Key", origins=["https://p.test"])
    return ProviderHttp(
        provider,
        httpx.AsyncClient(transport=handler),
        auth=auth,
        concurrency=1,
        retry=RetryPolicy(retries=1),
        sleep=RecordingSleep(),
        draw=lambda: 0.5,
    )


def connection_refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def too_slow(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("slow", request=request)


@pytest.mark.parametrize(
    ("answer", "outcome", "raised"),
    [
        (lambda r: httpx.Response(200, json={}), "ok", None),
        (lambda r: httpx.Response(422, json={"detail": "prompt missing"}), "refused", ProviderRefused),
        (lambda r: httpx.Response(429, headers={"Retry-After": "0"}), "rate_limited", TransientProviderError),
        (lambda r: httpx.Response(429, headers={"Retry-After": "600"}), "rate_limited", TransientProviderError),
        (lambda r: httpx.Response(503), "transient", TransientProviderError),
        (connection_refused, "transient", TransientProviderError),
        (too_slow, "timeout", TransientProviderError),
    ],
)
async def test_provider_calls_are_counted_once_by_outcome(
    answer: object, outcome: str, raised: type[Exception] | None
) -> None:
    provider = f"prov-{secrets.token_hex(3)}"
    http = provider_http(provider, httpx.MockTransport(answer))  # type: ignore[arg-type]
    if raised is None:
        await http.call("GET", "https://p.test/x", what="status")
    else:
        with pytest.raises(raised):
            await http.call("GET", "https://p.test/x", what="status")
    await http.client.aclose()
    calls = {
        kind: sample("likeness_provider_calls_total", {"provider": provider, "outcome": kind})
        for kind in metrics.PROVIDER_OUTCOMES
    }
    assert calls == {kind: (1.0 if kind == outcome else 0.0) for kind in metrics.PROVIDER_OUTCOMES}
    assert sample("likeness_provider_call_seconds_count", {"provider": provider}) == 1


# costs: counted when storage records a new shot or identity


def shot_generated(provider: str, cost_usd: float) -> ShotGenerated:
    character = uuid.uuid4()
    return ShotGenerated(
        correlation_id=character,
        tenant_id="studio",
        shot_id=uuid.uuid4(),
        character_id=character,
        provider=provider,
        image=ImageRef(
            key=f"studio/images/{'a' * 64}", sha256="a" * 64, content_type="image/png", width=8, height=8, size_bytes=64
        ),
        latency_ms=100.0,
        cost_usd=cost_usd,
        attempts=1,
    )


def test_a_shot_cost_counts_only_when_storage_announces_the_shot_as_newly_stored() -> None:
    provider = f"prov-{secrets.token_hex(3)}"
    generated = shot_generated(provider, 0.04)
    count_cost(generated, [])  # a late duplicate: nothing stored, nothing announced
    assert sample("likeness_provider_cost_usd_total", {"provider": provider}) == 0
    count_cost(generated, [generated])  # stands in for the ShotStored it caused
    assert sample("likeness_provider_cost_usd_total", {"provider": provider}) == pytest.approx(0.04)


def test_an_identity_cost_counts_when_recorded() -> None:
    provider = f"prov-{secrets.token_hex(3)}"
    character = uuid.uuid4()
    ready = IdentityReady(
        correlation_id=character,
        tenant_id="studio",
        character_id=character,
        provider=provider,
        identity_ref="lora-1",
        training_seconds=30.0,
        cost_usd=2.0,
        simulated=True,
    )
    count_cost(ready, [])
    assert sample("likeness_provider_cost_usd_total", {"provider": provider}) == pytest.approx(2.0)
