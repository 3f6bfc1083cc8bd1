import uuid

import pytest
from pydantic import ValidationError

from contracts import (
    CharacterCompleted,
    CharacterRequested,
    ClipScore,
    FaceScore,
    HumanAnswer,
    HumanVoteCast,
    ReferencesStored,
    ShotGenerated,
    ShotParams,
    ShotRequested,
    ShotScore,
    ShotScored,
    ShotStored,
    Verdict,
)
from services.storage import handlers
from tests.fakes import FakeRecords, character_requested, image_ref


def shot_requested(character: CharacterRequested, tenant: str | None = None) -> ShotRequested:
    return ShotRequested(
        correlation_id=character.character_id,
        tenant_id=tenant or character.tenant_id,
        shot_id=uuid.uuid4(),
        character_id=character.character_id,
        params=ShotParams(prompt="close-up"),
    )


def generated(shot: ShotRequested) -> ShotGenerated:
    return ShotGenerated.follow(
        shot,
        shot_id=shot.shot_id,
        character_id=shot.character_id,
        provider="sim",
        image=image_ref(seed=7),
        latency_ms=10,
        cost_usd=0.04,
        attempts=1,
    )


def scored(stored: ShotStored, verdict: Verdict = "same", scorer_key: str = "scoring-2-aaaaaaaaaaaa") -> ShotScored:
    score = ShotScore(
        verdict=verdict,
        basis="face",
        reason="a test score",
        face=FaceScore(
            faces_found=1,
            candidates=1,
            references_with_face=1,
            distance=0.3,
            mean_distance=0.3,
            max_distance=0.3,
            centroid_distance=0.3,
            same_below=0.6,
            uncertain_below=0.6,
            model="dlib",
        ),
        clip=ClipScore(image_similarity=0.9, calibrated=False, model="clip"),
        scorer_version="scoring-2",
        scorer_key=scorer_key,
        calibration_profile=None,
        scoring_ms=1,
    )
    return ShotScored.follow(
        stored, key=scorer_key, shot_id=stored.shot_id, character_id=stored.character_id, score=score
    )


async def test_a_requested_character_is_recorded_and_its_references_announced() -> None:
    records = FakeRecords()
    event = character_requested()
    emitted = await handlers.on_character_requested(event, records=records)
    [announced] = emitted
    assert isinstance(announced, ReferencesStored)
    assert announced.references == event.references
    assert event.character_id in records.characters


async def test_a_shot_for_another_tenants_character_fails_and_is_not_recorded() -> None:
    records = FakeRecords()
    character = character_requested("studio-a")
    await handlers.on_character_requested(character, records=records)
    intruder = shot_requested(character, tenant="studio-b")
    emitted = await handlers.on_shot_requested(intruder, records=records)
    assert [e.type for e in emitted] == ["ShotFailed"]
    assert intruder.shot_id not in records.shots


async def test_a_generated_shot_before_its_request_is_recorded_is_retried_later() -> None:
    records = FakeRecords()
    character = character_requested()
    await handlers.on_character_requested(character, records=records)
    shot = shot_requested(character)
    with pytest.raises(handlers.ShotNotRecordedYet):
        await handlers.on_shot_generated(generated(shot), records=records)


async def test_the_last_scored_shot_completes_the_character_once() -> None:
    records = FakeRecords()
    character = character_requested()
    await handlers.on_character_requested(character, records=records)
    shots = [shot_requested(character) for _ in range(2)]
    stored_events = []
    for shot in shots:
        await handlers.on_shot_requested(shot, records=records)
        [stored] = await handlers.on_shot_generated(generated(shot), records=records)
        assert isinstance(stored, ShotStored)
        assert stored.prompt == "close-up"
        stored_events.append(stored)
    assert await handlers.on_shot_scored(scored(stored_events[0]), records=records) == []
    completed = await handlers.on_shot_scored(scored(stored_events[1], "different"), records=records)
    assert [e.type for e in completed] == ["CharacterCompleted"]
    assert isinstance(completed[0], CharacterCompleted)
    assert completed[0].shots_scored == 2
    assert completed[0].verdicts == {"same": 1, "different": 1}


async def test_a_late_duplicate_generation_after_scoring_changes_nothing() -> None:
    records = FakeRecords()
    character = character_requested()
    await handlers.on_character_requested(character, records=records)
    shot = shot_requested(character)
    await handlers.on_shot_requested(shot, records=records)
    [stored] = await handlers.on_shot_generated(generated(shot), records=records)
    assert isinstance(stored, ShotStored)
    await handlers.on_shot_scored(scored(stored), records=records)
    assert await handlers.on_shot_generated(generated(shot), records=records) == []
    assert records.shots[shot.shot_id]["status"] == "scored"


async def one_stored_shot(records: FakeRecords) -> ShotStored:
    """A character with one shot, stored and ready to score."""
    character = character_requested()
    await handlers.on_character_requested(character, records=records)
    shot = shot_requested(character)
    await handlers.on_shot_requested(shot, records=records)
    [stored] = await handlers.on_shot_generated(generated(shot), records=records)
    assert isinstance(stored, ShotStored)
    return stored


async def test_a_rescoring_with_a_new_scorer_key_keeps_both_scores_and_completes_nothing() -> None:
    records = FakeRecords()
    stored = await one_stored_shot(records)
    first = await handlers.on_shot_scored(scored(stored, "same", "scoring-2-aaaaaaaaaaaa"), records=records)
    assert [e.type for e in first] == ["CharacterCompleted"]

    again = await handlers.on_shot_scored(scored(stored, "different", "scoring-2-bbbbbbbbbbbb"), records=records)

    assert again == [], "the character was completed by the first score"
    assert [s.score.scorer_key for s in records.scores] == ["scoring-2-aaaaaaaaaaaa", "scoring-2-bbbbbbbbbbbb"]
    assert records.scores[0].event_id != records.scores[1].event_id
    assert records.shots[stored.shot_id]["status"] == "scored"


async def test_the_same_scorer_key_twice_keeps_one_score() -> None:
    records = FakeRecords()
    stored = await one_stored_shot(records)
    event = scored(stored)
    assert [e.type for e in await handlers.on_shot_scored(event, records=records)] == ["CharacterCompleted"]

    assert await handlers.on_shot_scored(event, records=records) == []
    assert await handlers.on_shot_scored(scored(stored, "different"), records=records) == []

    assert len(records.scores) == 1
    assert records.scores[0].score.verdict == "same"


async def test_a_score_for_a_failed_shot_is_kept_but_completes_nothing() -> None:
    records = FakeRecords()
    stored = await one_stored_shot(records)
    await records.mark_shot_failed(stored.shot_id, "scoring", "gave up")

    assert await handlers.on_shot_scored(scored(stored), records=records) == []
    assert records.shots[stored.shot_id]["status"] == "failed"


def vote(shot: ShotRequested, rater: str, answer: HumanAnswer, *, tenant: str | None = None) -> HumanVoteCast:
    return HumanVoteCast(
        correlation_id=shot.character_id,
        tenant_id=tenant or shot.tenant_id,
        shot_id=shot.shot_id,
        character_id=shot.character_id,
        rater=rater,
        answer=answer,
    )


async def test_a_raters_later_vote_replaces_the_earlier_and_an_out_of_order_one_does_not() -> None:
    records = FakeRecords()
    character = character_requested()
    await handlers.on_character_requested(character, records=records)
    shot = shot_requested(character)
    await handlers.on_shot_requested(shot, records=records)
    first, second = vote(shot, "ana", "yes"), vote(shot, "ana", "no")
    other = vote(shot, "ben", "unsure")

    for event in (first, second, other, first):  # the first comes again, late: it changes nothing
        assert await handlers.on_human_vote(event, records=records) == []

    assert {rater: kept.answer for (_, rater), kept in records.votes.items()} == {"ana": "no", "ben": "unsure"}


async def test_a_vote_on_another_tenants_shot_is_dropped_and_one_before_the_shot_is_retried() -> None:
    records = FakeRecords()
    character = character_requested()
    await handlers.on_character_requested(character, records=records)
    shot = shot_requested(character)
    with pytest.raises(handlers.ShotNotRecordedYet):
        await handlers.on_human_vote(vote(shot, "ana", "yes"), records=records)
    await handlers.on_shot_requested(shot, records=records)
    await handlers.on_human_vote(vote(shot, "eve", "no", tenant="someone-else"), records=records)
    assert records.votes == {}


def test_a_rater_name_says_what_is_allowed() -> None:
    with pytest.raises(ValidationError, match="String should match pattern"):
        HumanVoteCast(
            correlation_id=uuid.uuid4(),
            tenant_id="t",
            shot_id=uuid.uuid4(),
            character_id=uuid.uuid4(),
            rater="<script>",
            answer="yes",
        )
