"""A character on `fal-instant-character`, every service a process, fal played by the loopback fake."""

from __future__ import annotations

import pytest

from infra.fakes.fal import FILE_PREFIX
from infra.fakes.faults import Fault
from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import score_rows_per_shot, submit_sample, wait_completed

pytestmark = pytest.mark.e2e

PROVIDER = "fal-instant-character"


def test_a_fal_character_gets_fifteen_shots_scored_once_each_through_retries(system: RunningSystem) -> None:
    fake = system.fal
    submits_before, outputs_before = fake.submits, len(fake.outputs)
    fake.inject("submit", Fault.rate_limited("1"), Fault.unavailable())  # retried inside the adapter's call

    character_id = submit_sample(system, provider=PROVIDER)
    character = wait_completed(system, character_id)

    identity = character["identity"]
    assert (character["provider"], identity["state"], identity["cost_usd"]) == (PROVIDER, "ready", 0.0)
    assert identity["identity_ref"].startswith(f"{PROVIDER}:")
    shots = character["shots"]
    assert len(shots) == 15
    assert [shot["status"] for shot in shots] == ["scored"] * 15
    assert set(score_rows_per_shot(system, character_id).values()) == {1}
    assert [shot["score"]["verdict"] for shot in shots] == ["same"] * 15  # the fake shows the reference person
    for shot in shots:
        assert shot["provider"] == PROVIDER
        assert shot["cost_usd"] == pytest.approx(0.10 * 1024 * 1024 / 1e6, abs=1e-6)  # square_hd at $0.10/MP
        assert (shot["image"]["width"], shot["image"]["height"]) == (1024, 1024)
        assert shot["simulation"]["simulated"] is True
        assert shot["simulation"]["drifted"] is False
        assert shot["simulation"]["transform"].startswith("fake fal server on loopback, not fal.ai")
    assert fake.submits - submits_before == 15 + 2
    served = fake.outputs[outputs_before:]
    assert len(served) == 15
    assert all(output["images"][0]["file_name"].startswith(FILE_PREFIX) for output in served)

    adapter_log = system.services.running["provider_adapter"].log_path.read_text(errors="replace")
    assert "fal-instant-character submit: HTTP 429" in adapter_log  # the retries were logged...
    assert fake.api_key not in adapter_log  # ...and the key never was

    seen = []
    for event_type, _ in system.client.events(character_id, timeout_s=30):
        seen.append(event_type)
        if event_type == "CharacterCompleted":
            break
    assert seen[:2] == ["CharacterRequested", "ReferencesStored"]
    assert seen.index("IdentityReady") < seen.index("ShotStored")
    assert seen.count("ShotStored") == seen.count("ShotScored") == 15
