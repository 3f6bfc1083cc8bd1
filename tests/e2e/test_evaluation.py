"""Human evaluation end to end: votes go through the gateway and storage; agreement is read back."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import submit_sample, wait_completed

pytestmark = pytest.mark.e2e


def evaluation(system: RunningSystem, character_id: str, votes: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """The character's agreement report once storage has recorded `votes` votes."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = system.client.http.get("/v1/evaluation", params={"character_id": character_id})
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body["votes"] == votes or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_votes_are_stored_once_per_rater_and_agreement_is_reported(system: RunningSystem) -> None:
    character_id = submit_sample(system)
    character = wait_completed(system, character_id)
    shots = [shot for shot in character["shots"] if shot["score"] is not None][:4]
    verdicts = [shot["score"]["verdict"] for shot in shots]
    machine = {"same": "yes", "different": "no", "no_face": "no", "uncertain": "unsure"}

    def vote(shot: dict[str, Any], rater: str, answer: str) -> int:
        path = f"/v1/shots/{shot['shot_id']}/votes"
        return system.client.http.post(path, json={"rater": rater, "answer": answer}).status_code

    for shot, verdict in zip(shots, verdicts, strict=True):
        assert vote(shot, "ana", machine[verdict]) == 202
    assert vote(shots[0], "ben", "unsure") == 202
    assert vote(shots[0], "ben", machine[verdicts[0]]) == 202  # ben changes his mind: one vote counts
    assert vote(shots[1], "ana", "yes") == 202  # and so does ana, here; ben disagrees with her
    assert vote(shots[1], "ben", "no") == 202

    report = evaluation(system, character_id, votes=6)  # ana 4, ben 2 (revotes replace)
    assert (report["shots"], report["votes"], report["raters"], report["multi_rated_shots"]) == (4, 6, 2, 2)
    assert report["machine_compared"] == 4
    listed = {item["shot_id"]: item for item in report["disagreements"]}
    assert shots[0]["shot_id"] not in listed  # both raters agree with each other and the machine
    assert listed[shots[1]["shot_id"]]["why"].startswith("raters split between yes and no")
    assert listed[shots[1]["shot_id"]]["votes"] == {"ana": "yes", "ben": "no"}

    # bad input is refused with a reason; another tenant can neither vote on the shot nor see the votes
    bad = system.client.http.post(f"/v1/shots/{shots[0]['shot_id']}/votes", json={"rater": "ana", "answer": "maybe"})
    assert bad.status_code == 422
    other = system.other_tenant.http
    assert (
        other.post(f"/v1/shots/{shots[0]['shot_id']}/votes", json={"rater": "eve", "answer": "no"}).status_code == 404
    )
    assert other.get("/v1/evaluation", params={"character_id": character_id}).json()["votes"] == 0
