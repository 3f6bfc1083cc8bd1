"""End-to-end: the embedded stack plus every service as its own OS process, driven over HTTP."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.demo import DEMO_SIM_ENV, GatewayClient
from infra.fakes.fal import FalFake
from infra.fakes.fleet import FakeFleet, fake_fleet
from infra.processes import ServiceSet
from infra.stack import StackEndpoints
from infra.stack.ports import free_port


@dataclass
class RunningSystem:
    endpoints: StackEndpoints
    services: ServiceSet
    client: GatewayClient
    other_tenant: GatewayClient
    base_url: str
    fakes: FakeFleet  # every provider's loopback fake

    @property
    def fal(self) -> FalFake:
        return self.fakes.fal


@pytest.fixture(scope="session")
def fakes() -> Iterator[FakeFleet]:
    """Every provider's loopback fake, for the whole session."""
    with fake_fleet() as fleet:
        yield fleet


@pytest.fixture(scope="session")
def system(
    tmp_path_factory: pytest.TempPathFactory, stack_endpoints: StackEndpoints, fakes: FakeFleet
) -> Iterator[RunningSystem]:
    """The four services as processes on the session's stack, with two tenants' keys; `sim` and every fake."""
    data_dir: Path = tmp_path_factory.mktemp("e2e")
    key, other_key = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    port = free_port()
    env = {
        **stack_endpoints.env(),
        **DEMO_SIM_ENV,
        **fakes.env(),
        "LIKENESS_PROVIDER_ADAPTER_SIM_LATENCY_MS": "150",
        "LIKENESS_PROVIDER_ADAPTER_SIM_IDENTITY_SECONDS": "0.5",
        "LIKENESS_GATEWAY_PORT": str(port),
        "LIKENESS_GATEWAY_API_KEYS": f"studio-a:{key},studio-b:{other_key}",
        # the suite drives many characters through one key, far past an app's pace; the limit itself is
        # tested in tests/integration/test_api_keys.py
        "LIKENESS_GATEWAY_RATE_LIMIT_PER_MINUTE": "60000",
        "LIKENESS_GATEWAY_RATE_LIMIT_BURST": "5000",
        "LIKENESS_GATEWAY_CALLBACK_ALLOW_LOOPBACK": "true",  # the e2e app's callback receiver is on loopback
        "LIKENESS_GATEWAY_CALLBACK_BACKOFF_S": "0.5",
        # providers that call back do so to this gateway, which checks them with the same secrets
        "LIKENESS_PROVIDER_ADAPTER_WEBHOOK_BASE_URL": f"http://127.0.0.1:{port}",
        "REPLICATE_WEBHOOK_SECRET": fakes.replicate.webhook_secret,
        "ASTRIA_CALLBACK_SECRET": secrets.token_urlsafe(24),
    }
    services = ServiceSet(data_dir, env)
    try:
        services.start_all()
        base_url = f"http://127.0.0.1:{port}"
        client, other = GatewayClient(base_url, key), GatewayClient(base_url, other_key)
        yield RunningSystem(stack_endpoints, services, client, other, base_url, fakes)
        client.close()
        other.close()
    finally:
        exit_codes = services.stop_all()
    assert set(exit_codes.values()) <= {0}, f"services did not stop cleanly: {exit_codes}"
