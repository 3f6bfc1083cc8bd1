"""A character on `fal-flux-redux`, every service a process, fal played by the loopback fake."""

from __future__ import annotations

import pytest

from infra.sample import demo_shots
from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import score_rows_per_shot, submit_sample, wait_completed

pytestmark = pytest.mark.e2e

PROVIDER = "fal-flux-redux"


def test_a_redux_character_gets_fifteen_scored_shots_and_no_prompt_reaches_fal(system: RunningSystem) -> None:
    fake = system.fal
    redux_before = len(fake.received_redux)

    character_id = submit_sample(system, provider=PROVIDER)
    character = wait_completed(system, character_id)

    assert (character["provider"], character["identity"]["state"]) == (PROVIDER, "ready")
    assert character["identity"]["identity_ref"].startswith(f"{PROVIDER}:")
    shots = character["shots"]
    assert [shot["status"] for shot in shots] == ["scored"] * 15
    assert set(score_rows_per_shot(system, character_id).values()) == {1}
    assert [shot["score"]["verdict"] for shot in shots] == ["same"] * 15  # variations of the reference person
    for shot in shots:
        width, height = shot["image"]["width"], shot["image"]["height"]
        assert shot["cost_usd"] == pytest.approx(0.025 * width * height / 1e6, abs=1e-6)
        assert shot["simulation"]["simulated"] is True
    sent = fake.received_redux[redux_before:]
    assert len(sent) == 15
    assert sorted(request.seed or 0 for request in sent) == sorted(params.seed for params in demo_shots())
