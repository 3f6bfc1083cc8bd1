"""Re-scoring by replay: a scorer with a new key replays every stored ShotStored event."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import submit_sample, wait_completed

pytestmark = pytest.mark.e2e

# A calibration change: a tighter "same" threshold with an uncertain band. Simulated shots sit at
# <= 0.37 (clean) and >= 0.66 (drifted), so the verdicts stay the same; the scorer key does not.
NEW_THRESHOLDS = {"LIKENESS_SCORING_FACE_SAME_BELOW": "0.55", "LIKENESS_SCORING_FACE_UNCERTAIN_BELOW": "0.6"}


async def _rows(system: RunningSystem, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(system.endpoints.database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def score_rows(system: RunningSystem, character_id: str) -> list[dict[str, Any]]:
    rows = asyncio.run(
        _rows(
            system,
            """SELECT sc.shot_id, sc.scorer_key, sc.event_id, sc.score::text AS score, sc.scored_at
               FROM records.scores sc JOIN records.shots s USING (shot_id)
               WHERE s.character_id=$1 ORDER BY sc.score_id""",
            uuid.UUID(character_id),
        )
    )
    return [dict(row) for row in rows]


def completed_events(system: RunningSystem, character_id: str) -> int:
    rows = asyncio.run(
        _rows(
            system,
            "SELECT count(*) AS n FROM records.event_log WHERE character_id=$1 AND type='CharacterCompleted'",
            uuid.UUID(character_id),
        )
    )
    return int(rows[0]["n"])


@pytest.fixture
def restore_scoring(system: RunningSystem) -> Iterator[None]:
    """Whatever the test does to the scoring service, the next test gets the usual one back."""
    usual = dict(system.services.env)
    yield
    system.services.stop("scoring")
    system.services.env = usual
    system.services.start("scoring")
    system.services.wait_ready(["scoring"])


def restart_scoring(system: RunningSystem, extra_env: dict[str, str]) -> None:
    assert system.services.stop("scoring") == 0
    system.services.env = {**system.services.env, **extra_env}
    system.services.start("scoring")
    system.services.wait_ready(["scoring"])


@pytest.mark.usefixtures("restore_scoring")
def test_a_new_scorer_rescores_every_stored_shot_and_keeps_the_old_scores(system: RunningSystem) -> None:
    character_id = submit_sample(system)
    before = wait_completed(system, character_id)
    old_rows = score_rows(system, character_id)
    old_keys = {row["scorer_key"] for row in old_rows}
    assert len(old_rows) == 15
    assert len(old_keys) == 1
    (old_key,) = old_keys

    restart_scoring(system, NEW_THRESHOLDS)

    deadline = time.monotonic() + 120
    rows = score_rows(system, character_id)
    while len(rows) < 30 and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = score_rows(system, character_id)
    assert len(rows) == 30, f"expected 15 new scores beside the 15 old ones, found {len(rows)}"
    time.sleep(2.0)  # anything extra (a duplicate) would arrive now
    rows = score_rows(system, character_id)
    assert len(rows) == 30

    # the old scores are untouched, row for row
    assert [row for row in rows if row["scorer_key"] == old_key] == old_rows
    new_rows = [row for row in rows if row["scorer_key"] != old_key]
    assert len({row["scorer_key"] for row in new_rows}) == 1
    assert {row["shot_id"] for row in new_rows} == {row["shot_id"] for row in old_rows}

    # the character shows (and reports) the newest score of every shot, made with the new thresholds
    after = system.client.character(character_id)
    new_key = new_rows[0]["scorer_key"]
    assert {shot["score"]["scorer_key"] for shot in after["shots"]} == {new_key}
    assert {shot["score"]["face"]["same_below"] for shot in after["shots"]} == {0.55}
    verdicts = {shot["shot_id"]: shot["score"]["verdict"] for shot in after["shots"]}
    assert verdicts == {shot["shot_id"]: shot["score"]["verdict"] for shot in before["shots"]}
    # a re-scoring does not complete the character a second time
    assert completed_events(system, character_id) == 1
