"""Storage's cost alerts: a CostAlert when a tenant's recorded spend this month first reaches 80% and 100% of
its monthly budget, once per tenant, month and threshold, whatever is redelivered."""

from __future__ import annotations

import uuid

from contracts import (
    CharacterRequested,
    CostAlert,
    Event,
    IdentityReady,
    ShotGenerated,
    ShotParams,
    ShotRequested,
    SimulationNote,
)
from services.storage import handlers
from services.storage.ports import MonthSpend
from tests.fakes import FakeRecords, character_requested, image_ref


async def a_character(records: FakeRecords, tenant: str = "studio-a") -> CharacterRequested:
    character = character_requested(tenant)
    await handlers.on_character_requested(character, records=records)
    return character


async def a_shot(records: FakeRecords, character: CharacterRequested, cost_usd: float) -> ShotGenerated:
    """A shot requested, then generated at `cost_usd` by the simulator (not yet handled)."""
    request = ShotRequested(
        correlation_id=character.character_id,
        tenant_id=character.tenant_id,
        shot_id=uuid.uuid4(),
        character_id=character.character_id,
        params=ShotParams(prompt="close-up"),
    )
    await handlers.on_shot_requested(request, records=records)
    return ShotGenerated.follow(
        request,
        shot_id=request.shot_id,
        character_id=request.character_id,
        provider="sim",
        image=image_ref(seed=3),
        latency_ms=5,
        cost_usd=cost_usd,
        attempts=1,
        simulation=SimulationNote(transform="crop", drifted=False),
    )


def alerts(events: list[Event]) -> list[CostAlert]:
    return [e for e in events if isinstance(e, CostAlert)]


async def test_crossing_80_percent_emits_one_cost_alert_that_says_the_spend_is_simulated() -> None:
    records = FakeRecords(budgets={"studio-a": 1.00})
    character = await a_character(records)
    assert alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.30), records=records)) == []
    assert alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.30), records=records)) == []
    emitted = await handlers.on_shot_generated(await a_shot(records, character, 0.30), records=records)
    assert [e.type for e in emitted] == ["ShotStored", "CostAlert"]
    [alert] = alerts(emitted)
    assert alert.subject == "likeness.tenant.cost_alert.v1"
    assert (alert.tenant_id, alert.month, alert.threshold_percent) == ("studio-a", "2026-11", 80)
    assert (alert.budget_usd, round(alert.spend_usd, 2), round(alert.simulated_usd, 2)) == (1.0, 0.9, 0.9)
    assert alert.correlation_id == character.character_id
    assert "$0.90 of its $1.00 budget for 2026-11" in alert.message
    assert "simulated" in alert.message
    assert "at 100% new characters and shots will be refused" in alert.message


async def test_a_redelivered_cost_emits_nothing_new_and_a_rerun_after_a_crash_emits_the_same_id() -> None:
    records = FakeRecords(budgets={"studio-a": 1.00})
    character = await a_character(records)
    shot = await a_shot(records, character, 0.85)
    [first] = alerts(await handlers.on_shot_generated(shot, records=records))
    assert alerts(await handlers.on_shot_generated(shot, records=records)) == []  # the same event again
    again = await a_shot(records, character, 0.01)  # another cost, still under 100%
    assert alerts(await handlers.on_shot_generated(again, records=records)) == []
    assert list(records.cost_alerts) == [("studio-a", "2026-11", 80)]

    # A crash before the commit loses the alert's row; the handler runs again and emits the very same event id,
    # so JetStream's duplicate window and every consumer drop whichever copy comes second.
    fresh = FakeRecords(budgets={"studio-a": 1.00})
    character_again = await a_character(fresh)
    [rerun] = alerts(await handlers.on_shot_generated(await a_shot(fresh, character_again, 0.85), records=fresh))
    assert rerun.event_id == first.event_id


async def test_crossing_100_percent_emits_the_second_alert_and_then_nothing_more_this_month() -> None:
    records = FakeRecords(budgets={"studio-a": 1.00})
    character = await a_character(records)
    [eighty] = alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.80), records=records))
    [hundred] = alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.20), records=records))
    assert (eighty.threshold_percent, hundred.threshold_percent) == (80, 100)
    assert hundred.event_id != eighty.event_id
    assert "refused until the budget is raised (`likeness budgets set`)" in hundred.message
    assert alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.50), records=records)) == []


async def test_one_cost_over_both_thresholds_emits_both_alerts_in_order() -> None:
    records = FakeRecords(budgets={"studio-a": 2.00})
    character = await a_character(records)
    emitted = alerts(await handlers.on_shot_generated(await a_shot(records, character, 2.50), records=records))
    assert [a.threshold_percent for a in emitted] == [80, 100]


async def test_next_month_starts_again() -> None:
    records = FakeRecords(budgets={"studio-a": 1.00})
    character = await a_character(records)
    [november] = alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.90), records=records))
    records.month = "2026-12"
    assert alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.10), records=records)) == []
    [december] = alerts(await handlers.on_shot_generated(await a_shot(records, character, 0.75), records=records))
    assert (december.month, december.threshold_percent, round(december.spend_usd, 2)) == ("2026-12", 80, 0.85)
    assert december.event_id != november.event_id


async def test_an_identity_cost_counts_and_a_tenant_without_a_budget_gets_no_alerts() -> None:
    records = FakeRecords(budgets={"studio-a": 10.00})
    budgeted = await a_character(records, "studio-a")
    unlimited = await a_character(records, "studio-b")
    for character in (budgeted, unlimited):
        ready = IdentityReady(
            correlation_id=character.character_id,
            tenant_id=character.tenant_id,
            character_id=character.character_id,
            provider="fal-flux-lora",
            identity_ref="lora",
            training_seconds=60,
            cost_usd=9.0,
            simulated=False,
        )
        emitted = await handlers.on_identity_ready(ready, records=records)
        if character is budgeted:
            [alert] = alerts(emitted)
            assert (alert.threshold_percent, alert.simulated_usd) == (80, 0.0)
            assert "simulated" not in alert.message
        else:
            assert emitted == []
    # studio-b's spend never counts towards studio-a's budget
    assert alerts(await handlers.on_shot_generated(await a_shot(records, unlimited, 5.0), records=records)) == []


def test_reaching_a_threshold_is_not_missed_by_binary_fractions() -> None:
    def spend(usd: float) -> MonthSpend:
        return MonthSpend(month="2026-11", budget_usd=1.0, spend_usd=usd, simulated_usd=0.0)

    assert handlers.budget_reached(spend(0.1 + 0.7), 80)  # 0.7999999999999999
    assert not handlers.budget_reached(spend(0.79), 80)
    assert handlers.budget_reached(spend(1.0), 100)
    assert not handlers.budget_reached(spend(0.99), 100)
