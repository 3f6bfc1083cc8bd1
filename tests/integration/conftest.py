"""Integration fixtures: the loopback fake of fal's queue API."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from infra.fakes.fal import FalFake
from infra.fakes.server import LoopbackServer


@dataclass
class FalServer:
    fake: FalFake
    url: str
    key: str
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def fal() -> AsyncIterator[FalServer]:
    """A fresh fake fal server on loopback, with its own key, for one test."""
    key = f"fal-test-{secrets.token_hex(4)}:{secrets.token_hex(16)}"
    fake = FalFake(api_key=key)
    with LoopbackServer(fake.app, name="fal") as url:
        server = FalServer(fake, url, key)
        yield server
        await server.close()
