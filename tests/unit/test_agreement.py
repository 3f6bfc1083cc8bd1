"""infra.evidence.agreement: inter-rater and human-machine agreement, checked against hand computations."""

from __future__ import annotations

import pytest

from infra.evidence.agreement import Answer, Vote, agreement, cohen_kappa, fleiss_kappa, majority


def test_fleiss_kappa_by_hand() -> None:
    # P_i = 1, 1, 0, 1 -> 0.75; yes 5/8, no 3/8 -> chance 0.53125; kappa = 0.21875 / 0.46875
    items: list[list[Answer]] = [["yes", "yes"], ["no", "no"], ["yes", "no"], ["yes", "yes"]]
    assert fleiss_kappa(items) == pytest.approx(0.21875 / 0.46875)
    assert fleiss_kappa([["yes", "yes"], ["yes", "yes"]]) is None  # one answer only: chance is 1
    assert fleiss_kappa([["yes", "no"]]) is None  # one item is no statistic
    assert fleiss_kappa([["yes", "yes", "yes"], ["no", "no", "no"]]) == pytest.approx(1.0)


def test_cohen_kappa_by_hand() -> None:
    pairs: list[tuple[Answer, Answer]] = [("yes", "yes"), ("no", "no"), ("yes", "no"), ("unsure", "unsure")]
    assert cohen_kappa(pairs) == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))


def test_majority_calls_a_tie_unsure() -> None:
    assert majority(["yes", "yes", "no"]) == "yes"
    assert majority(["yes", "no"]) == "unsure"
    assert majority([]) == "unsure"


def vote(shot: str, rater: str, answer: Answer, verdict: str | None) -> Vote:
    return Vote(shot_id=shot, character_id="c", provider="sim", rater=rater, answer=answer, verdict=verdict)


def test_agreement_lists_splits_and_contradictions_of_the_machine() -> None:
    votes = [
        vote("s1", "ana", "yes", "same"),
        vote("s1", "ben", "yes", "same"),
        vote("s2", "ana", "no", "same"),  # both raters contradict the machine
        vote("s2", "ben", "no", "same"),
        vote("s3", "ana", "yes", "different"),  # a split: majority unsure, no contradiction
        vote("s3", "ben", "no", "different"),
        vote("s4", "ana", "unsure", None),  # not scored yet
    ]
    result = agreement(votes)
    assert (result.shots, result.votes, result.raters, result.multi_rated_shots) == (4, 7, 2, 3)
    assert result.machine_compared == 3
    assert result.machine_agreement == pytest.approx(1 / 3)  # s1 matches; s2 yes/no; s3 unsure vs no
    assert result.pairwise_agreement == pytest.approx(2 / 3)
    why = {j.shot_id: j.why for j in result.disagreements}
    assert why == {
        "s2": "raters say no, the automatic verdict is same",
        "s3": "raters split between yes and no",
    }
