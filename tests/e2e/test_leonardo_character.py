"""A character on `leonardo-character-reference`, every service a process, Leonardo played by its loopback fake."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import score_rows_per_shot, submit_sample, wait_completed

pytestmark = pytest.mark.e2e

PROVIDER = "leonardo-character-reference"


def test_a_leonardo_character_uploads_its_reference_once_and_gets_fifteen_scored_shots(
    system: RunningSystem,
) -> None:
    fake = system.fakes.leonardo
    uploads_before, submits_before = fake.uploads, fake.submits

    character_id = submit_sample(system, provider=PROVIDER)
    character = wait_completed(system, character_id)

    identity = character["identity"]
    assert (character["provider"], identity["state"], identity["cost_usd"]) == (PROVIDER, "ready", 0.0)
    assert identity["identity_ref"].startswith(f"{PROVIDER}:")
    shots = character["shots"]
    assert [shot["status"] for shot in shots] == ["scored"] * 15
    assert set(score_rows_per_shot(system, character_id).values()) == {1}
    assert [shot["score"]["verdict"] for shot in shots] == ["same"] * 15  # the fake shows the reference person
    assert all(shot["cost_usd"] > 0 and shot["simulation"]["simulated"] for shot in shots)
    assert fake.uploads - uploads_before == 1  # the reference went up once, not once per shot
    assert fake.submits - submits_before == 15
    assert fake.upload_authorizations == []  # the presigned upload never carried the key
    adapter_log = system.services.running["provider_adapter"].log_path.read_text(errors="replace")
    assert fake.api_key not in adapter_log
