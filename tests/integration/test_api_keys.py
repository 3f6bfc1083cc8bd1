"""API keys made with `likeness keys` against the gateway on the real stack: hashed, scoped, revocable,
rate-limited, and one tenant's key never reaches another tenant's characters, shots or images.

The gateway runs in-process (its lifespan, then httpx over ASGI); the CLI runs through typer's CliRunner
in a worker thread (it calls asyncio.run itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from infra import cli_keys
from infra.db import create_pool, migrate_service
from infra.objects import ObjectStore
from infra.sample import sample_reference_png
from infra.stack import EmbeddedStack, StackEndpoints
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.storage.app import MIGRATIONS as STORAGE_MIGRATIONS
from tests.integration.test_provider_webhooks import infra_settings

pytestmark = pytest.mark.integration

NO_DATABASE_URL: dict[str, str | None] = {"LIKENESS_DATABASE_URL": None}
KEY_LINE = re.compile(r"^lk_[0-9a-f]{12}_\S+$", re.MULTILINE)


@dataclass
class Gateway:
    client: httpx.AsyncClient
    store: ObjectStore
    bootstrap_key: str


@asynccontextmanager
async def running_gateway(endpoints: StackEndpoints, **settings: Any) -> AsyncIterator[Gateway]:
    bootstrap_key = secrets.token_hex(12)
    app = create_app(
        infra_settings(endpoints),
        GatewaySettings(api_keys=SecretStr(f"studio:{bootstrap_key}"), **settings),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(client, app.state.gateway.store, bootstrap_key)


@pytest.fixture
async def gateway(stack_endpoints: StackEndpoints) -> AsyncIterator[Gateway]:
    """A gateway that trusts a key lookup for one second, so a revocation shows within a test."""
    async with running_gateway(stack_endpoints, key_cache_s=1.0) as running:
        yield running


@pytest.fixture
async def pool(stack_endpoints: StackEndpoints) -> AsyncIterator[asyncpg.Pool]:
    """The database, with storage's `records` schema (the gateway reads it; storage normally creates it)."""
    pool = await create_pool(stack_endpoints.database_url)
    await migrate_service(pool, "storage", STORAGE_MIGRATIONS)
    yield pool
    await pool.close()


def tenant() -> str:
    return f"t-{secrets.token_hex(4)}"


async def keys_cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """`likeness keys ...`, as a user runs it (in a thread: the command runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, cli_keys.app, list(args), env=env)


async def created_key(endpoints: StackEndpoints, tenant_id: str, *scopes: str, name: str = "") -> str:
    scope_args = [arg for scope in scopes for arg in ("--scope", scope)]
    result = await keys_cli(
        "create", "--tenant", tenant_id, *scope_args, "--name", name, "--database-url", endpoints.database_url
    )
    assert result.exit_code == 0, result.output
    found = KEY_LINE.findall(result.stdout)
    assert len(found) == 1, result.stdout
    return str(found[0])


def key_id(key: str) -> str:
    return key.split("_")[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_created_key_is_printed_once_listed_without_its_secret_and_stored_only_hashed(
    stack_endpoints: StackEndpoints, gateway: Gateway, pool: asyncpg.Pool
) -> None:
    studio = tenant()
    key = await created_key(stack_endpoints, studio, "read", "write", name="ci")

    assert (await gateway.client.get(f"/v1/characters/{uuid.uuid4()}", headers=auth(key))).status_code == 404

    row = await pool.fetchrow("SELECT * FROM gateway.api_keys WHERE key_id = $1", key_id(key))
    assert row is not None
    assert row["tenant_id"] == studio
    assert row["name"] == "ci"
    assert sorted(row["scopes"]) == ["read", "write"]
    assert bytes(row["key_sha256"]) == hashlib.sha256(key.encode()).digest()
    assert row["last_used_at"] is not None
    stored = json.dumps({name: str(value) for name, value in dict(row).items()}) + bytes(row["key_sha256"]).hex()
    secret = key.split("_", 2)[2]
    assert secret not in stored
    assert key not in stored

    listed = await keys_cli("list", "--tenant", studio, "--database-url", stack_endpoints.database_url)
    assert listed.exit_code == 0, listed.output
    assert key_id(key) in listed.stdout
    assert "read,write" in listed.stdout
    assert secret not in listed.stdout


async def test_a_key_without_a_scope_gets_403_naming_the_scope(
    stack_endpoints: StackEndpoints, gateway: Gateway
) -> None:
    studio = tenant()
    reader = await created_key(stack_endpoints, studio, "read")
    writer = await created_key(stack_endpoints, studio, "write")
    character = uuid.uuid4()

    refused_write = await gateway.client.post(
        f"/v1/characters/{character}/shots", json={"prompt": "a portrait"}, headers=auth(reader)
    )
    assert refused_write.status_code == 403
    assert "lacks the 'write' scope" in refused_write.json()["detail"]

    refused_read = await gateway.client.get(f"/v1/characters/{character}", headers=auth(writer))
    assert refused_read.status_code == 403
    assert "lacks the 'read' scope" in refused_read.json()["detail"]

    # Allowed through: the character is simply not there.
    allowed_write = await gateway.client.post(
        f"/v1/characters/{character}/shots", json={"prompt": "a portrait"}, headers=auth(writer)
    )
    assert allowed_write.status_code == 404
    assert (await gateway.client.get(f"/v1/characters/{character}", headers=auth(reader))).status_code == 404


async def test_the_bootstrap_key_from_the_settings_still_works_with_every_scope(gateway: Gateway) -> None:
    headers = {"X-API-Key": gateway.bootstrap_key}
    character = uuid.uuid4()
    assert (await gateway.client.get(f"/v1/characters/{character}", headers=headers)).status_code == 404
    posted = await gateway.client.post(f"/v1/characters/{character}/shots", json={"prompt": "x"}, headers=headers)
    assert posted.status_code == 404


async def test_unknown_and_missing_keys_get_401(gateway: Gateway) -> None:
    path = f"/v1/characters/{uuid.uuid4()}"
    fake = f"lk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    for headers in ({}, auth("not-a-key"), auth(fake)):
        response = await gateway.client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


async def test_a_revoked_key_is_refused_once_the_key_cache_expires(
    stack_endpoints: StackEndpoints, gateway: Gateway
) -> None:
    key = await created_key(stack_endpoints, tenant(), "read")
    path = f"/v1/characters/{uuid.uuid4()}"
    assert (await gateway.client.get(path, headers=auth(key))).status_code == 404  # accepted, and now cached

    revoked = await keys_cli("revoke", key_id(key), "--database-url", stack_endpoints.database_url)
    assert revoked.exit_code == 0, revoked.output
    assert f"key {key_id(key)}" in revoked.stdout
    assert "revoked" in revoked.stdout

    await asyncio.sleep(1.2)  # the fixture's key_cache_s is 1 s
    refused = await gateway.client.get(path, headers=auth(key))
    assert refused.status_code == 401
    assert f"this key ({key_id(key)}) was revoked on {datetime.now(UTC):%Y-%m-%d}" in refused.json()["detail"]

    listed = await keys_cli("list", "--database-url", stack_endpoints.database_url)
    line = next(line for line in listed.stdout.splitlines() if key_id(key) in line)
    assert f"{datetime.now(UTC):%Y-%m-%d}" in line.split("│")[-2]  # the revoked column


async def test_revoking_an_unknown_key_says_so(stack_endpoints: StackEndpoints) -> None:
    result = await keys_cli("revoke", "000000000000", "--database-url", stack_endpoints.database_url)
    assert result.exit_code == 1
    assert "no key '000000000000'" in result.output


async def test_the_cli_finds_the_database_of_the_stack_likeness_up_runs(
    stack_endpoints: StackEndpoints, request: pytest.FixtureRequest
) -> None:
    if os.environ.get("LIKENESS_TEST_BACKEND", "embedded") != "embedded":
        pytest.skip("only the embedded stack records its endpoints in a data folder")
    stack: EmbeddedStack = request.getfixturevalue("embedded_stack")
    studio = tenant()
    key = await created_key(stack_endpoints, studio, "read")

    listed = await keys_cli("list", "--tenant", studio, "--data-dir", str(stack.data_dir), env=NO_DATABASE_URL)

    assert listed.exit_code == 0, listed.output
    assert key_id(key) in listed.stdout


async def test_the_cli_says_where_to_find_a_database_when_there_is_none(tmp_path: Path) -> None:
    result = await keys_cli("list", "--data-dir", str(tmp_path), env=NO_DATABASE_URL)
    assert result.exit_code == 2
    assert "no stack started by `likeness up` is running" in result.output
    assert "--database-url" in result.output


async def test_the_cli_refuses_unknown_scopes(stack_endpoints: StackEndpoints) -> None:
    result = await keys_cli(
        "create", "--tenant", tenant(), "--scope", "delete", "--database-url", stack_endpoints.database_url
    )
    assert result.exit_code == 2
    assert "read, write, admin" in result.output


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(stack_endpoints: StackEndpoints) -> None:
    limited = await created_key(stack_endpoints, tenant(), "read")
    other = await created_key(stack_endpoints, tenant(), "read")
    path = f"/v1/characters/{uuid.uuid4()}"
    async with running_gateway(stack_endpoints, rate_limit_per_minute=6, rate_limit_burst=2) as gateway:
        for _ in range(2):
            assert (await gateway.client.get(path, headers=auth(limited))).status_code == 404
        refused = await gateway.client.get(path, headers=auth(limited))

        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "10"  # 6 a minute: a token every 10 s
        assert "6 requests a minute (bursts of 2); retry in 10 s" in refused.json()["detail"]
        assert (await gateway.client.get(path, headers=auth(other))).status_code == 404  # its own bucket
        for _ in range(5):  # neither the health check nor providers' webhooks count against a key
            assert (await gateway.client.get("/healthz")).status_code == 200
            webhook = await gateway.client.post("/v1/webhooks/replicate-flux-lora", content=b"{}")
            assert webhook.status_code != 429


async def test_one_tenants_key_never_reaches_another_tenants_character_shot_or_image(
    stack_endpoints: StackEndpoints, gateway: Gateway, pool: asyncpg.Pool
) -> None:
    owner, other = tenant(), tenant()
    owner_key = await created_key(stack_endpoints, owner, "read", "write")
    other_key = await created_key(stack_endpoints, other, "read", "write")
    image = await gateway.store.put_image(owner, sample_reference_png(), "image/png")
    character_id, shot_id = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    await pool.execute(
        """INSERT INTO records.characters (character_id, tenant_id, name, strategy, provider, status, created_at)
           VALUES ($1, $2, 'Ada', 'instant_reference', 'sim', 'ready', $3)""",
        character_id,
        owner,
        now,
    )
    await pool.execute(
        """INSERT INTO records.shots (shot_id, character_id, tenant_id, status, params, provider, requested_at)
           VALUES ($1, $2, $3, 'requested', $4, 'sim', $5)""",
        shot_id,
        character_id,
        owner,
        {"prompt": "a portrait"},
        now,
    )
    reads = [f"/v1/characters/{character_id}", f"/v1/shots/{shot_id}", f"/v1/images/{image.sha256}"]

    for path in reads:
        assert (await gateway.client.get(path, headers=auth(owner_key))).status_code == 200, path
        assert (await gateway.client.get(path, headers=auth(other_key))).status_code == 404, path
    assert (await gateway.client.get(reads[0], headers=auth(owner_key))).json()["name"] == "Ada"
    shots = f"/v1/characters/{character_id}/shots"
    assert (await gateway.client.post(shots, json={"prompt": "x"}, headers=auth(other_key))).status_code == 404
