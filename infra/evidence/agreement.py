"""Human evaluation: do raters agree with each other, and with the automatic verdict? Pure: no I/O.

Each rater answers "same character as the references?" with yes, no or unsure, once per shot (a later
vote replaces an earlier one before it reaches here).

- **Between raters**: Fleiss' kappa over the shots with at least two votes (categories yes/no/unsure;
  Fleiss' formula for a varying number of raters per shot, after Fleiss 1971 with per-item n_i), and
  the raw pairwise agreement (the share of rater pairs on a shot that gave the same answer). Kappa is
  None with fewer than two such shots or when every vote is the same answer (chance agreement 1).
- **With the machine**: the shot's human answer is the majority of its votes (a tie is "unsure"); the
  automatic verdict maps same -> yes, different and no_face -> no, uncertain -> unsure. Reported: the
  share that match, and Cohen's kappa between the two.
- **Disagreements** to review: shots whose raters split between yes and no, and shots where the human
  majority says yes and the machine no, or the reverse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

Answer = Literal["yes", "no", "unsure"]
ANSWERS: tuple[Answer, ...] = ("yes", "no", "unsure")
MACHINE_ANSWER: dict[str, Answer] = {"same": "yes", "different": "no", "no_face": "no", "uncertain": "unsure"}


@dataclass(frozen=True)
class Vote:
    shot_id: str
    character_id: str
    provider: str
    rater: str
    answer: Answer
    verdict: str | None  # the automatic verdict of the shot's newest score, if scored


@dataclass(frozen=True)
class ShotJudgement:
    shot_id: str
    character_id: str
    provider: str
    votes: dict[str, Answer]  # rater: answer
    human: Answer  # the majority; a tie is "unsure"
    machine: Answer | None
    verdict: str | None
    why: str  # why it is listed as a disagreement ("" when it is not)


@dataclass(frozen=True)
class Agreement:
    shots: int
    votes: int
    raters: int
    multi_rated_shots: int  # shots with at least two votes: the ones inter-rater figures use
    fleiss_kappa: float | None
    pairwise_agreement: float | None
    machine_compared: int  # shots with votes and an automatic verdict
    machine_agreement: float | None
    machine_kappa: float | None
    disagreements: list[ShotJudgement]


def majority(answers: Iterable[Answer]) -> Answer:
    counts = Counter(answers).most_common()
    if not counts:
        return "unsure"
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "unsure"
    return counts[0][0]


def fleiss_kappa(items: Sequence[Sequence[Answer]]) -> float | None:
    """Fleiss' kappa for items rated by two or more raters each (the number may vary by item)."""
    rated = [list(item) for item in items if len(item) >= 2]
    if len(rated) < 2:
        return None
    observed: list[float] = []
    totals: Counter[Answer] = Counter()
    for item in rated:
        n = len(item)
        counts = Counter(item)
        totals.update(counts)
        observed.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
    all_votes = sum(totals.values())
    chance = sum((count / all_votes) ** 2 for count in totals.values())
    if chance >= 1.0:
        return None
    return (sum(observed) / len(observed) - chance) / (1.0 - chance)


def cohen_kappa(pairs: Sequence[tuple[Answer, Answer]]) -> float | None:
    if len(pairs) < 2:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    chance = sum(left[answer] * right[answer] for answer in ANSWERS) / (n * n)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def pairwise_agreement(items: Sequence[Sequence[Answer]]) -> float | None:
    agree = total = 0
    for item in items:
        for a, b in combinations(item, 2):
            total += 1
            agree += a == b
    return None if total == 0 else agree / total


def agreement(votes: Iterable[Vote]) -> Agreement:
    by_shot: dict[str, list[Vote]] = {}
    for vote in votes:
        by_shot.setdefault(vote.shot_id, []).append(vote)
    judgements = [_judge(shot_votes) for shot_votes in by_shot.values()]
    items = [list(j.votes.values()) for j in judgements]
    multi = [item for item in items if len(item) >= 2]
    compared = [(j.human, j.machine) for j in judgements if j.machine is not None]
    return Agreement(
        shots=len(judgements),
        votes=sum(len(item) for item in items),
        raters=len({vote.rater for shot_votes in by_shot.values() for vote in shot_votes}),
        multi_rated_shots=len(multi),
        fleiss_kappa=fleiss_kappa(multi),
        pairwise_agreement=pairwise_agreement(multi),
        machine_compared=len(compared),
        machine_agreement=None if not compared else sum(h == m for h, m in compared) / len(compared),
        machine_kappa=cohen_kappa([(h, m) for h, m in compared if m is not None]),
        disagreements=[j for j in judgements if j.why],
    )


def _judge(votes: list[Vote]) -> ShotJudgement:
    first = votes[0]
    answers = {vote.rater: vote.answer for vote in votes}
    human = majority(answers.values())
    machine = MACHINE_ANSWER.get(first.verdict) if first.verdict is not None else None
    reasons = []
    if {"yes", "no"} <= set(answers.values()):
        reasons.append("raters split between yes and no")
    if machine is not None and {human, machine} == {"yes", "no"}:
        reasons.append(f"raters say {human}, the automatic verdict is {first.verdict}")
    return ShotJudgement(
        shot_id=first.shot_id,
        character_id=first.character_id,
        provider=first.provider,
        votes=answers,
        human=human,
        machine=machine,
        verdict=first.verdict,
        why="; ".join(reasons),
    )
