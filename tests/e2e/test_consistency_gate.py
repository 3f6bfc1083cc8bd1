"""The consistency gate end to end: a shot the simulator drifts to another person is made again with new
seeds (twice), then by the fallback provider (fal Instant Character, played by its fake), which shows the
right person. Every take is kept, scored once and reported; the character completes once, on the final take."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from infra.sample import sample_reference_png
from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e

FALLBACK = "fal-instant-character"
GATE_ENV = {
    "LIKENESS_STORAGE_GATE_MAX_REGENERATIONS": "2",
    "LIKENESS_FALLBACK": f'{{"sim": "{FALLBACK}"}}',
    "LIKENESS_PROVIDER_ADAPTER_SIM_DRIFT_RATE": "1.0",  # every sim take shows another person
}
SWAPPED = ("storage", "provider_adapter")


@pytest.fixture
def gated(system: RunningSystem) -> Iterator[RunningSystem]:
    """storage and the provider adapter restarted with the gate on and a drifting simulator; then put back."""
    usual = dict(system.services.env)
    for name in SWAPPED:
        assert system.services.stop(name) == 0
    system.services.env = {**usual, **GATE_ENV}
    try:
        for name in SWAPPED:
            system.services.start(name)
        system.services.wait_ready(list(SWAPPED))
        yield system
    finally:
        for name in SWAPPED:
            system.services.stop(name)
        system.services.env = usual
        for name in SWAPPED:
            system.services.start(name)
        system.services.wait_ready(list(SWAPPED))


async def _fetch(system: RunningSystem, query: str, *args: object) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(system.endpoints.database_url)
    try:
        return [dict(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


def fetch(system: RunningSystem, query: str, *args: object) -> list[dict[str, Any]]:
    return asyncio.run(_fetch(system, query, *args))


def test_a_drifted_shot_is_regenerated_twice_then_rescued_by_the_fallback(gated: RunningSystem) -> None:
    client = gated.client
    character_id = client.create_character("Gate", [("astronaut.png", sample_reference_png(), "image/png")])
    client.wait_for_character(character_id)
    shot_id = client.request_shot(character_id, {"prompt": "close-up portrait", "scenario": "close-up", "seed": 4})

    deadline = time.monotonic() + 120
    character = client.character(character_id)
    while character["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.3)
        character = client.character(character_id)
    [shot] = character["shots"]
    assert character["status"] == "completed", shot

    takes = shot["takes"]
    assert [t["take"] for t in takes] == [1, 2, 3, 4]
    assert [t["reason"] for t in takes] == ["first", "regenerate", "regenerate", "fallback"]
    assert [t["provider"] for t in takes] == ["sim", "sim", "sim", FALLBACK]
    assert [t["score"]["verdict"] for t in takes] == ["different", "different", "different", "same"]
    assert [t["simulation"]["drifted"] for t in takes] == [True, True, True, False]
    assert [t["final"] for t in takes] == [False, False, False, True]
    assert takes[0]["seed"] == 4
    assert len({t["seed"] for t in takes}) == 4  # each retake a new seed
    assert len({t["image"]["sha256"] for t in takes}) == 4
    assert all(t["status"] == "scored" and t["cost_usd"] > 0 for t in takes)
    # the shot shows its final take: the fallback's image, provider and verdict
    assert (shot["status"], shot["take"], shot["final_take"], shot["provider"]) == ("scored", 4, 4, FALLBACK)
    assert shot["score"]["verdict"] == "same"
    assert shot["image"] == takes[3]["image"]
    assert client.http.get(f"/v1/shots/{shot_id}").json()["takes"] == takes

    # one score per take, one provider job per take (none submitted twice), one CharacterCompleted
    scores = fetch(gated, "SELECT take FROM records.scores WHERE shot_id=$1 ORDER BY take", uuid.UUID(shot_id))
    assert [row["take"] for row in scores] == [1, 2, 3, 4]
    jobs = fetch(
        gated,
        "SELECT take, provider, outcome FROM provider.shot_jobs WHERE shot_id=$1 ORDER BY take, attempt",
        uuid.UUID(shot_id),
    )
    succeeded = [(row["take"], row["provider"]) for row in jobs if row["outcome"] == "succeeded"]
    assert succeeded == [(1, "sim"), (2, "sim"), (3, "sim"), (4, FALLBACK)]
    assert all(row["outcome"] in ("succeeded", "failed") for row in jobs)  # a failed job was retried, not doubled
    log = fetch(
        gated,
        "SELECT type, payload FROM records.event_log WHERE character_id=$1 ORDER BY seq",
        uuid.UUID(character_id),
    )
    types = [row["type"] for row in log]
    assert types.count("ShotScored") == 4
    assert types.count("RetakeShot") == 3
    assert types.count("CharacterCompleted") == 1
    assert types.index("CharacterCompleted") > max(i for i, kind in enumerate(types) if kind == "ShotScored")

    # the report counts every take as a shot of its provider, its cost too, and says what the gate did
    report = client.http.get("/v1/reports", params={"character_id": character_id}).json()
    rows = {row["provider"]: row for row in report["summaries"]}
    sim, fallback = rows["sim"], rows[FALLBACK]
    assert (sim["shots_requested"], sim["shots_scored"], sim["passed"]) == (3, 3, 0)
    assert (sim["takes_regenerated"], sim["takes_fallback"]) == (2, 0)
    assert sim["shot_cost_total_usd"] == pytest.approx(sum(t["cost_usd"] for t in takes[:3]))
    assert (fallback["shots_requested"], fallback["passed"], fallback["takes_fallback"]) == (1, 1, 1)
    assert fallback["rescued_by_fallback"] == 1
    assert report["gate"] == {
        "shots": 1,
        "takes": 4,
        "shots_regenerated": 1,
        "takes_regenerated": 2,
        "takes_fallback": 1,
        "rescued_by_fallback": 1,
        "rescued_by_regeneration": 0,
    }
