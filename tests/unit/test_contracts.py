import uuid

import pytest
from pydantic import ValidationError

from contracts import ALL_EVENTS, CharacterRequested, ReferencesStored, ShotParams, ShotRequested
from contracts.snapshots import SCHEMA_DIR, event_schemas
from tests.fakes import character_requested


def test_committed_schema_snapshots_match_the_code() -> None:
    committed = {path.name: path.read_text() for path in SCHEMA_DIR.glob("*.json")}
    current = event_schemas()
    assert sorted(committed) == sorted(current), "run ./taskw schemas after adding or removing an event"
    for name, text in current.items():
        assert committed[name] == text, f"{name} drifted from the code: a breaking change needs a new subject"


def test_every_subject_is_versioned_and_unique() -> None:
    subjects = [event.subject for event in ALL_EVENTS]
    assert len(set(subjects)) == len(subjects)
    for subject in subjects:
        parts = subject.split(".")
        assert parts[0] == "likeness"
        assert len(parts) == 4
        assert parts[-1] == "v1"


def test_follow_up_events_have_deterministic_ids_and_carry_the_envelope() -> None:
    cause = character_requested()
    first = ReferencesStored.follow(
        cause, character_id=cause.character_id, strategy="lora", provider="sim", references=cause.references
    )
    again = ReferencesStored.follow(
        cause, character_id=cause.character_id, strategy="lora", provider="sim", references=cause.references
    )
    assert first.event_id == again.event_id
    assert first.causation_id == cause.event_id
    assert first.correlation_id == cause.character_id
    assert first.tenant_id == "studio"


def test_keys_tell_apart_events_of_one_type_from_one_cause() -> None:
    cause = character_requested()
    a = ShotRequested.follow(
        cause, key="a", shot_id=uuid.uuid4(), character_id=cause.character_id, params=ShotParams(prompt="x")
    )
    b = ShotRequested.follow(
        cause, key="b", shot_id=uuid.uuid4(), character_id=cause.character_id, params=ShotParams(prompt="x")
    )
    assert a.event_id != b.event_id


def test_unknown_fields_and_bad_values_are_rejected() -> None:
    data = character_requested().model_dump()
    with pytest.raises(ValidationError):
        CharacterRequested.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        CharacterRequested.model_validate({**data, "references": []})
    with pytest.raises(ValidationError):
        ShotParams(prompt="")


def test_events_round_trip_through_json() -> None:
    event = character_requested()
    assert CharacterRequested.model_validate_json(event.model_dump_json()) == event


def test_committed_asyncapi_document_matches_the_services() -> None:
    from contracts.snapshots import ASYNCAPI_PATH, asyncapi_document

    assert ASYNCAPI_PATH.read_text() == asyncapi_document(), "run ./taskw schemas: the AsyncAPI document drifted"
