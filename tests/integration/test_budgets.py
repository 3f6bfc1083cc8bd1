"""Monthly budgets on real PostgreSQL: `likeness budgets` sets them, storage sends CostAlert at 80% and 100%
(once, even when two replicas record costs at the same moment), and the gateway answers 402 to new paid work of
a tenant at its budget while other tenants go on.

The gateway runs in-process (its lifespan, then httpx over ASGI); storage's handlers run against the real
tables in one transaction each, as its subscribers run them; the CLI runs through typer's CliRunner in a thread.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from contracts import CharacterRequested, CostAlert, Event, ShotGenerated, ShotParams, ShotRequested, SimulationNote
from infra import cli, cli_budgets
from infra.db import create_pool, migrate_service
from infra.sample import sample_reference_png
from infra.stack import StackEndpoints
from services.gateway.adapters.api_keys import migrate_gateway
from services.storage import handlers
from services.storage.adapters.records import PostgresRecords
from services.storage.app import MIGRATIONS as STORAGE_MIGRATIONS
from tests.fakes import character_requested, image_ref
from tests.integration.test_api_keys import auth, created_key, running_gateway, tenant

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(stack_endpoints: StackEndpoints) -> AsyncIterator[asyncpg.Pool]:
    """The database with storage's and the gateway's schemas, as both services leave it at start-up."""
    pool = await create_pool(stack_endpoints.database_url)
    await migrate_service(pool, "storage", STORAGE_MIGRATIONS)
    await migrate_gateway(pool)
    yield pool
    await pool.close()


async def budgets_cli(*args: str) -> Result:
    """`likeness budgets ...`, as an operator runs it (in a thread: the command runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, cli.app, ["budgets", *args], env={"COLUMNS": "200"})


async def set_budget(endpoints: StackEndpoints, tenant_id: str, usd: str) -> None:
    result = await budgets_cli("set", "--tenant", tenant_id, "--usd", usd, "--database-url", endpoints.database_url)
    assert result.exit_code == 0, result.output


async def in_transaction(pool: asyncpg.Pool, handler: Any, event: Event) -> list[Event]:
    """One storage message: its handler in one transaction, as storage's subscriber runs it."""
    async with pool.acquire() as conn, conn.transaction():
        emitted: list[Event] = await handler(event, records=PostgresRecords(conn))
        return emitted


async def recorded_character(pool: asyncpg.Pool, tenant_id: str) -> CharacterRequested:
    character = character_requested(tenant_id)
    await in_transaction(pool, handlers.on_character_requested, character)
    return character


async def requested_shot(pool: asyncpg.Pool, character: CharacterRequested, cost_usd: float) -> ShotGenerated:
    request = ShotRequested(
        correlation_id=character.character_id,
        tenant_id=character.tenant_id,
        shot_id=uuid.uuid4(),
        character_id=character.character_id,
        params=ShotParams(prompt="a portrait"),
    )
    await in_transaction(pool, handlers.on_shot_requested, request)
    return ShotGenerated.follow(
        request,
        shot_id=request.shot_id,
        character_id=request.character_id,
        provider="sim",
        image=image_ref(character.tenant_id, seed=5),
        latency_ms=5,
        cost_usd=cost_usd,
        attempts=1,
        simulation=SimulationNote(transform="crop", drifted=False),
    )


def alerts(events: list[Event]) -> list[CostAlert]:
    return [e for e in events if isinstance(e, CostAlert)]


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


async def test_storage_alerts_once_at_80_and_100_percent_even_when_two_replicas_record_costs_together(
    stack_endpoints: StackEndpoints, pool: asyncpg.Pool
) -> None:
    studio = tenant()
    await set_budget(stack_endpoints, studio, "1.00")
    character = await recorded_character(pool, studio)
    first, second = await requested_shot(pool, character, 0.45), await requested_shot(pool, character, 0.45)

    # Two replicas record a cost each at the same moment; together they cross 80%. The second waits for the
    # first's commit (the tenant's budget lock), then counts both and sends the alert: exactly one, not zero.
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        emitted_first = await handlers.on_shot_generated(first, records=PostgresRecords(conn))
        racing = asyncio.create_task(in_transaction(pool, handlers.on_shot_generated, second))
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second cost was counted before the first committed"
        await transaction.commit()
    emitted_second = await racing
    assert alerts(emitted_first) == []
    [eighty] = alerts(emitted_second)
    assert (eighty.month, eighty.threshold_percent, round(eighty.spend_usd, 2)) == (this_month(), 80, 0.9)
    assert round(eighty.simulated_usd, 2) == 0.9
    assert "simulated" in eighty.message

    # The same ShotGenerated again (a duplicate under another consumer, a re-run): nothing new.
    assert alerts(await in_transaction(pool, handlers.on_shot_generated, second)) == []
    [hundred] = alerts(
        await in_transaction(pool, handlers.on_shot_generated, await requested_shot(pool, character, 0.10))
    )
    assert hundred.threshold_percent == 100
    assert (
        alerts(await in_transaction(pool, handlers.on_shot_generated, await requested_shot(pool, character, 0.10)))
        == []
    )
    rows = await pool.fetch(
        "SELECT month, threshold_percent, event_id FROM records.cost_alerts WHERE tenant_id=$1 ORDER BY 2", studio
    )
    assert [(r["month"], r["threshold_percent"], r["event_id"]) for r in rows] == [
        (this_month(), 80, eighty.event_id),
        (this_month(), 100, hundred.event_id),
    ]

    # Costs recorded last month do not count this month (each take of a shot costs: records.shot_takes).
    await pool.execute(
        "UPDATE records.shot_takes SET stored_at = stored_at - interval '40 days' WHERE shot_id = $1", first.shot_id
    )
    async with pool.acquire() as conn, conn.transaction():
        spend = await PostgresRecords(conn).month_spend(studio)
    assert spend is not None
    assert round(spend.spend_usd, 2) == 0.65
    assert spend.budget_usd == 1.0


async def test_a_tenant_at_its_budget_gets_402_for_new_work_and_another_tenant_is_unaffected(
    stack_endpoints: StackEndpoints, pool: asyncpg.Pool
) -> None:
    spent, other = tenant(), tenant()
    spent_key = await created_key(stack_endpoints, spent, "read", "write")
    other_key = await created_key(stack_endpoints, other, "read", "write")
    await set_budget(stack_endpoints, spent, "1.25")  # spent exactly: at the budget is over it
    await set_budget(stack_endpoints, other, "1.00")
    character = await recorded_character(pool, spent)
    await in_transaction(pool, handlers.on_shot_generated, await requested_shot(pool, character, 1.25))
    upload = {"references": ("ref.png", sample_reference_png(), "image/png")}

    async with running_gateway(stack_endpoints) as gateway:
        refused = await gateway.client.post(
            "/v1/characters", data={"name": "Ada"}, files=upload, headers=auth(spent_key)
        )
        assert refused.status_code == 402, refused.text
        detail = refused.json()["detail"]
        assert detail["reason"] == "budget_exhausted"
        assert (detail["tenant"], detail["month"], detail["budget_usd"]) == (spent, this_month(), 1.25)
        assert round(detail["spend_usd"], 2) == 1.25
        assert round(detail["simulated_usd"], 2) == 1.25
        assert f"likeness budgets set --tenant {spent}" in detail["message"]
        assert "next month" in detail["message"]
        assert "$1.25" in detail["message"]
        shot = await gateway.client.post(
            f"/v1/characters/{character.character_id}/shots", json={"prompt": "x"}, headers=auth(spent_key)
        )
        assert shot.status_code == 402
        assert shot.json()["detail"]["reason"] == "budget_exhausted"
        # Reads go on: work already accepted is not cancelled, and can be followed.
        assert (
            await gateway.client.get(f"/v1/characters/{character.character_id}", headers=auth(spent_key))
        ).status_code == 200

        accepted = await gateway.client.post(
            "/v1/characters", data={"name": "Grace"}, files=upload, headers=auth(other_key)
        )
        assert accepted.status_code == 202, accepted.text

        cleared = await budgets_cli("clear", "--tenant", spent, "--database-url", stack_endpoints.database_url)
        assert cleared.exit_code == 0, cleared.output
        again = await gateway.client.post("/v1/characters", data={"name": "Ada"}, files=upload, headers=auth(spent_key))
        assert again.status_code == 202, again.text

        document = (await gateway.client.get("/openapi.json")).json()
        for path in ("/v1/characters", "/v1/characters/{character_id}/shots"):
            assert "402" in document["paths"][path]["post"]["responses"], path


async def test_the_budgets_cli_sets_shows_and_clears_a_budget(
    stack_endpoints: StackEndpoints, pool: asyncpg.Pool
) -> None:
    url = stack_endpoints.database_url
    studio = tenant()
    await set_budget(stack_endpoints, studio, "2")
    character = await recorded_character(pool, studio)
    await in_transaction(pool, handlers.on_shot_generated, await requested_shot(pool, character, 1.70))

    changed = await budgets_cli("set", "--tenant", studio, "--usd", "2.50", "--database-url", url)
    assert changed.exit_code == 0, changed.output
    assert f"tenant '{studio}': budget $2.50 a month" in changed.stdout
    assert f"spent $1.70 in {this_month()} (68%, $1.70 of it simulated): ok" in changed.stdout

    shown = await budgets_cli("show", "--tenant", studio, "--database-url", url)
    assert shown.exit_code == 0, shown.output
    assert studio in shown.stdout
    assert "$2.50" in shown.stdout
    assert "$1.70" in shown.stdout
    assert "68%" in shown.stdout
    assert studio in (await budgets_cli("show", "--database-url", url)).stdout

    await set_budget(stack_endpoints, studio, "1.70")
    assert "refusing new work" in (await budgets_cli("show", "--tenant", studio, "--database-url", url)).stdout

    cleared = await budgets_cli("clear", "--tenant", studio, "--database-url", url)
    assert cleared.exit_code == 0
    assert "no budget now (no limit)" in cleared.stdout
    none = await budgets_cli("show", "--tenant", studio, "--database-url", url)
    assert none.exit_code == 0
    assert "no budget for tenant" in none.stdout
    twice = await budgets_cli("clear", "--tenant", studio, "--database-url", url)
    assert twice.exit_code == 1
    assert "has no budget" in twice.output

    negative = await budgets_cli("set", "--tenant", studio, "--usd", "-5", "--database-url", url)
    assert negative.exit_code == 2
    bad_tenant = await budgets_cli("set", "--tenant", "no/slash", "--usd", "5", "--database-url", url)
    assert bad_tenant.exit_code == 2


def test_the_budgets_cli_says_where_to_find_a_database_when_there_is_none(tmp_path: Any) -> None:
    result = CliRunner().invoke(
        cli_budgets.app, ["show", "--data-dir", str(tmp_path)], env={"LIKENESS_DATABASE_URL": None}
    )
    assert result.exit_code == 2
    assert "no stack started by `likeness up`" in result.output
