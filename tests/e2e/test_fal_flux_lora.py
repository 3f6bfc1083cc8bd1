"""A character on `fal-flux-lora`: a LoRA trained on fal's queue, then shots with it; fal is the loopback fake."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from infra.fakes.fal import FILE_PREFIX
from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import score_rows_per_shot, submit_sample, wait_completed

pytestmark = pytest.mark.e2e

PROVIDER = "fal-flux-lora"


def assert_fifteen_same_shots_scored_once(system: RunningSystem, character_id: str, character: dict[str, Any]) -> None:
    identity = character["identity"]
    assert (character["provider"], identity["state"], identity["cost_usd"]) == (PROVIDER, "ready", 2.0)
    assert identity["identity_ref"].startswith(f"{PROVIDER}:lkns")
    assert "/files/" in identity["identity_ref"]
    shots = character["shots"]
    assert [shot["status"] for shot in shots] == ["scored"] * 15
    assert set(score_rows_per_shot(system, character_id).values()) == {1}
    assert [shot["score"]["verdict"] for shot in shots] == ["same"] * 15  # the fake renders the first reference
    for shot in shots:
        assert shot["provider"] == PROVIDER
        width, height = shot["image"]["width"], shot["image"]["height"]
        assert shot["cost_usd"] == pytest.approx(0.035 * width * height / 1e6, abs=1e-6)  # $0.035/MP
        assert shot["simulation"]["simulated"] is True
        assert shot["simulation"]["transform"].startswith("fake fal server on loopback, not fal.ai")


def assert_weights_copied_for_this_tenant_only(system: RunningSystem, identity: dict[str, Any], name: str) -> None:
    """The trained weights the provider handed out are in our storage, served to the tenant and no other."""
    weights = identity["weights"]
    assert weights is not None
    assert weights["file_name"].endswith(name)
    download = system.client.http.get(weights["url"])
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == weights["sha256"]
    assert len(download.content) == weights["size_bytes"]
    assert download.content.startswith(b"fake LoRA weights")  # the fake's file, byte for byte
    assert system.other_tenant.http.get(weights["url"]).status_code == 404


def event_types_until_completed(system: RunningSystem, character_id: str) -> list[str]:
    seen = []
    for event_type, _ in system.client.events(character_id, timeout_s=30):
        seen.append(event_type)
        if event_type == "CharacterCompleted":
            break
    return seen


def test_a_flux_lora_character_trains_once_then_gets_fifteen_shots_scored_once_each(system: RunningSystem) -> None:
    fake = system.fal
    trainings_before, flux_before = fake.training_submits, len(fake.received_flux_lora)

    character_id = submit_sample(system, provider=PROVIDER)
    character = wait_completed(system, character_id)

    assert_fifteen_same_shots_scored_once(system, character_id, character)
    assert fake.training_submits - trainings_before == 1
    sent = fake.received_flux_lora[flux_before:]
    assert len(sent) == 15
    lora = character["identity"]["identity_ref"].split(":", 2)[2]
    assert {item.loras[0].path for item in sent} == {lora}
    assert FILE_PREFIX in lora
    assert_weights_copied_for_this_tenant_only(system, character["identity"], "-lora.safetensors")
    # fal's signed webhooks (the training's, and each shot's) reached the gateway and passed its Ed25519 check
    training_id = character["identity"]["identity_ref"].split(":", 2)[2].split(FILE_PREFIX, 1)[1].split("-lora")[0]
    delivered = {request_id: status for url, request_id, status in fake.webhooks_sent if url.endswith(PROVIDER)}
    assert delivered[training_id] == 202
    assert set(delivered.values()) == {202}
    assert event_types_until_completed(system, character_id).count("IdentityReady") == 1  # webhook or poll, once

    adapter_log = system.services.running["provider_adapter"].log_path.read_text(errors="replace")
    assert fake.api_key not in adapter_log


def test_killing_the_provider_adapter_while_training_resumes_the_same_training(system: RunningSystem) -> None:
    fake = system.fal
    trainings_before, outputs_before = fake.training_submits, len(fake.outputs)
    fake.training_s = 15.0  # long enough for the kill to land while the training is pending
    try:
        character_id = submit_sample(system, provider=PROVIDER)
        deadline = time.monotonic() + 60
        while fake.training_submits == trainings_before and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # the job id is persisted before the adapter waits on it
        assert fake.training_submits - trainings_before == 1
        assert len(fake.outputs) == outputs_before  # still training: no LoRA and no shot yet
        system.services.kill("provider_adapter")
        time.sleep(1.0)
        system.services.start("provider_adapter")
        system.services.wait_ready(["provider_adapter"])
        character = wait_completed(system, character_id, timeout_s=240.0)
    finally:
        fake.training_s = 0.0
    assert_fifteen_same_shots_scored_once(system, character_id, character)
    assert fake.training_submits - trainings_before == 1  # resumed from the stored job id, never resubmitted
