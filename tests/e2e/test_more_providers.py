"""Astria, Replicate and the three ComfyUI workflows end to end: every service a process, each provider faked."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import RunningSystem
from tests.e2e.test_fal_flux_lora import assert_weights_copied_for_this_tenant_only, event_types_until_completed
from tests.e2e.test_sample_character import score_rows_per_shot, submit_sample, wait_completed

pytestmark = pytest.mark.e2e


def test_an_astria_character_is_tuned_once_and_gets_fifteen_scored_shots(system: RunningSystem) -> None:
    fake = system.fakes.astria
    tunes_before, prompts_before = fake.tunes_created, fake.prompts_created

    character = wait_completed(system, submit_sample(system, provider="astria-tune"))

    identity = character["identity"]
    assert (character["provider"], identity["state"]) == ("astria-tune", "ready")
    assert identity["cost_usd"] == pytest.approx(1.5)  # the tune's (stale, unverified) list price
    shots = character["shots"]
    assert [shot["status"] for shot in shots] == ["scored"] * 15
    assert set(score_rows_per_shot(system, character["character_id"]).values()) == {1}
    assert [shot["score"]["verdict"] for shot in shots] == ["same"] * 15
    assert all(shot["cost_usd"] == pytest.approx(0.10) and shot["simulation"]["simulated"] for shot in shots)
    assert (fake.tunes_created - tunes_before, fake.prompts_created - prompts_before) == (1, 15)
    # Astria called the gateway back for the tune and each prompt, and every callback passed its check
    delivered = [status for url, status in fake.callbacks if "/v1/webhooks/astria-tune" in url]
    assert len(delivered) >= 16
    assert set(delivered) == {202}


@pytest.mark.parametrize("provider", ["comfyui-ipadapter", "comfyui-instantid", "comfyui-reference-only"])
def test_a_comfyui_workflow_character_gets_fifteen_scored_shots(system: RunningSystem, provider: str) -> None:
    fake = system.fakes.comfyui
    accepted_before = fake.accepted

    character = wait_completed(system, submit_sample(system, provider=provider))

    assert (character["provider"], character["identity"]["state"]) == (provider, "ready")
    shots = character["shots"]
    assert [shot["status"] for shot in shots] == ["scored"] * 15
    assert set(score_rows_per_shot(system, character["character_id"]).values()) == {1}
    assert [shot["score"]["verdict"] for shot in shots] == ["same"] * 15
    assert all(shot["cost_usd"] == 0.0 and shot["simulation"]["simulated"] for shot in shots)
    assert fake.accepted - accepted_before == 15


def test_a_replicate_character_trains_once_and_gets_fifteen_scored_shots(system: RunningSystem) -> None:
    fake = system.fakes.replicate
    trainings_before = fake.training_submits

    character = wait_completed(system, submit_sample(system, provider="replicate-flux-lora"))

    identity = character["identity"]
    assert (character["provider"], identity["state"]) == ("replicate-flux-lora", "ready")
    assert identity["identity_ref"].startswith("replicate-flux-lora:")
    assert identity["cost_usd"] > 0  # the training's GPU seconds at the H100 rate
    assert_weights_copied_for_this_tenant_only(system, identity, "-trained_model.tar")
    shots = character["shots"]
    assert [shot["status"] for shot in shots] == ["scored"] * 15
    assert set(score_rows_per_shot(system, character["character_id"]).values()) == {1}
    assert [shot["score"]["verdict"] for shot in shots] == ["same"] * 15
    assert all(shot["simulation"]["simulated"] for shot in shots)
    assert fake.training_submits - trainings_before == 1
    # Replicate's signed webhooks reached the gateway and passed; the identity was settled once either way
    delivered = [status for url, _, status in fake.webhooks_sent if url.endswith("/v1/webhooks/replicate-flux-lora")]
    assert delivered
    assert set(delivered) == {202}
    assert event_types_until_completed(system, character["character_id"]).count("IdentityReady") == 1
