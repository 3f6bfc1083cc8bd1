"""Storage's logic: keep the system of record and say what became true. No I/O libraries here."""

from __future__ import annotations

from contracts import (
    COST_ALERT_THRESHOLDS,
    CharacterCompleted,
    CharacterRequested,
    CostAlert,
    Event,
    HumanVoteCast,
    IdentityFailed,
    IdentityProgress,
    IdentityReady,
    ReferencesStored,
    RetakeShot,
    ShotFailed,
    ShotGenerated,
    ShotRequested,
    ShotScored,
    ShotStored,
)
from services.storage.gate import Gate, next_take
from services.storage.ports import MonthSpend, Records


class ShotNotRecordedYet(Exception):
    """A provider finished a shot before this service recorded the request: try again shortly."""


async def on_character_requested(event: CharacterRequested, *, records: Records) -> list[Event]:
    await records.add_character(event)
    return [
        ReferencesStored.follow(
            event,
            character_id=event.character_id,
            strategy=event.strategy,
            provider=event.provider,
            references=event.references,
        )
    ]


async def on_identity_progress(event: IdentityProgress, *, records: Records) -> list[Event]:
    await records.set_identity_progress(event.character_id, event.percent)
    return []


async def on_identity_ready(event: IdentityReady, *, records: Records) -> list[Event]:
    await records.mark_identity_ready(event)
    return await _cost_alerts(event, records)


async def on_identity_failed(event: IdentityFailed, *, records: Records) -> list[Event]:
    await records.mark_identity_failed(event.character_id, event.reason)
    return []


async def on_human_vote(event: HumanVoteCast, *, records: Records) -> list[Event]:
    """Keep the vote. The gateway checked the shot is the tenant's; a vote about another tenant's shot is dropped."""
    owner = await records.shot_tenant(event.shot_id)
    if owner is None:
        raise ShotNotRecordedYet(f"vote on shot {event.shot_id} before the shot was recorded")
    if owner == event.tenant_id:
        await records.record_vote(event)
    return []


async def on_shot_requested(event: ShotRequested, *, records: Records) -> list[Event]:
    character = await records.character(event.character_id, lock=True)
    if character is None or character.tenant_id != event.tenant_id:
        return [
            ShotFailed.follow(
                event,
                shot_id=event.shot_id,
                character_id=event.character_id,
                stage="request",
                reason=f"character {event.character_id} does not exist for this tenant",
            )
        ]
    await records.add_shot(event, character.provider)
    if character.status == "completed":
        await records.set_character_status(event.character_id, "ready")
    return []


async def on_shot_generated(event: ShotGenerated, *, records: Records) -> list[Event]:
    prompt = await records.mark_shot_stored(event)
    if prompt is None:
        if await records.shot_exists(event.shot_id):
            return []  # already scored or failed: a late duplicate changes nothing
        raise ShotNotRecordedYet(f"shot {event.shot_id} generated before its request was recorded")
    stored = ShotStored.follow(
        event,
        shot_id=event.shot_id,
        character_id=event.character_id,
        prompt=prompt,
        image=event.image,
        references=await records.references(event.character_id),
        take=event.take,
    )
    return [stored, *await _cost_alerts(event, records)]


def budget_reached(spend: MonthSpend, threshold_percent: int) -> bool:
    """Spend at or over `threshold_percent` of the budget (to a millionth of a dollar, so 0.1 + 0.7 reaches 0.8)."""
    return round(spend.spend_usd * 100, 4) >= round(spend.budget_usd * threshold_percent, 4)


async def _cost_alerts(cause: ShotGenerated | IdentityReady, records: Records) -> list[Event]:
    """A CostAlert for each threshold this month's recorded spend (the cost just recorded included) has reached
    for the first time; a threshold already announced this month (by any replica, for any event) stays quiet."""
    spend = await records.month_spend(cause.tenant_id)
    if spend is None:
        return []  # no budget: unlimited
    alerts: list[Event] = []
    for threshold in COST_ALERT_THRESHOLDS:
        if not budget_reached(spend, threshold):
            continue
        alert = CostAlert.reached(
            cause,
            month=spend.month,
            threshold_percent=threshold,
            budget_usd=spend.budget_usd,
            spend_usd=spend.spend_usd,
            simulated_usd=spend.simulated_usd,
        )
        if await records.record_cost_alert(alert):
            alerts.append(alert)
    return alerts


async def on_shot_scored(event: ShotScored, *, records: Records, gate: Gate | None = None) -> list[Event]:
    """Keep the score; on a take's first score the consistency gate decides: another take, or the shot is done.

    `gate` None: no gate (every take is final). A re-scoring (a new scorer key) never asks for a take and
    never completes a character again; a redelivered score is the same event, so it asks for the same take.
    """
    character = await records.character(event.character_id, lock=True)  # serialise completion checks per character
    if not await records.add_score(event):
        return []  # a re-scoring (or a late score after a failure): the character's completion is old news
    shot = await records.shot_state(event.shot_id)
    if shot is None or shot.take != event.take or shot.status in ("scored", "failed"):
        return []  # a take that is no longer the shot's current one changes nothing
    following = None
    if gate is not None and character is not None:
        following = next_take(
            gate, shot_id=event.shot_id, take=event.take, verdict=event.score.verdict, own_provider=character.provider
        )
    if following is not None:
        await records.begin_take(event.shot_id, following, event.occurred_at)
        retake = RetakeShot.follow(
            event,
            key=f"{event.shot_id}:{following.take}",
            shot_id=event.shot_id,
            character_id=event.character_id,
            take=following.take,
            reason=following.reason,
            provider=following.provider,
            fallback_from=following.fallback_from,
            previous_verdict=event.score.verdict,
            params=shot.params.model_copy(update={"seed": following.seed}),
            references=await records.references(event.character_id),
        )
        return [retake]
    if not await records.finish_shot(event.shot_id, event.take, event.occurred_at):
        return []
    return await _completion(event, records)


async def on_shot_failed(event: ShotFailed, *, records: Records) -> list[Event]:
    """The take failed, and with it the shot when that take is its current one (a failed retake ends the shot:
    its final take is the failed one; the earlier takes stay recorded with their scores)."""
    if await records.character(event.character_id, lock=True) is None:
        return []
    await records.mark_shot_failed(event.shot_id, event.stage, event.reason, event.take)
    return await _completion(event, records)


async def _completion(cause: ShotScored | ShotFailed, records: Records) -> list[Event]:
    counts = await records.shot_counts(cause.character_id)
    if counts.total == 0 or counts.open > 0:
        return []
    await records.set_character_status(cause.character_id, "completed")
    return [
        CharacterCompleted.follow(
            cause,
            character_id=cause.character_id,
            shots_total=counts.total,
            shots_scored=counts.scored,
            shots_failed=counts.failed,
            verdicts=counts.verdicts,
        )
    ]
