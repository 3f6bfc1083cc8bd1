"""SIGTERM drains in-flight work: shots a provider adapter is generating when told to stop are finished
and recorded before it exits (exit code 0); none is generated twice after it comes back."""

from __future__ import annotations

import time

import pytest

from infra.processes import ServiceSet
from infra.sample import sample_reference_png
from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import score_rows_per_shot

pytestmark = pytest.mark.e2e

SLOW_SHOT_MS = 2500


def test_sigterm_finishes_the_shots_in_flight_before_exit(
    system: RunningSystem, tmp_path_factory: pytest.TempPathFactory
) -> None:
    client = system.client
    character_id = client.create_character("Drain", [("a.png", sample_reference_png(), "image/png")])
    client.wait_for_character(character_id)

    # swap the suite's provider adapter for one whose simulated shots take 2.5 s
    assert system.services.stop("provider_adapter") == 0
    slow = ServiceSet(
        tmp_path_factory.mktemp("slow-adapter"),
        {
            **system.services.env,
            "LIKENESS_PROVIDER_ADAPTER_SIM_LATENCY_MS": str(SLOW_SHOT_MS),
            "LIKENESS_PROVIDER_ADAPTER_SIM_LATENCY_JITTER_MS": "0",
        },
    )
    try:
        slow.start_all(("provider_adapter",))
        shot_ids = [
            client.request_shot(character_id, {"prompt": f"portrait {i}", "scenario": "portrait", "seed": i + 1})
            for i in range(2)
        ]
        time.sleep(1.0)  # both shots are with the (simulated) provider now, 1.5 s from done
        asked = time.monotonic()
        code = slow.stop("provider_adapter", timeout_s=30)
        took = time.monotonic() - asked
    finally:
        slow.stop_all()
        system.services.start("provider_adapter")
        system.services.wait_ready(["provider_adapter"])

    assert code == 0, f"exit code {code}"
    assert took > 1.0, f"it stopped in {took:.1f} s: it cannot have waited for shots of {SLOW_SHOT_MS} ms"
    # recorded while the replacement adapter was still starting: the stopping one finished them
    shots = {shot["shot_id"]: shot for shot in client.character(character_id)["shots"]}
    assert all(shots[shot_id]["status"] in ("stored", "scored") for shot_id in shot_ids), shots
    deadline = time.monotonic() + 60
    while client.character(character_id)["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert set(score_rows_per_shot(system, character_id).values()) == {1}
