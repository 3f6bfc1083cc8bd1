"""How consistent a set of scored shots is: mean face distance with its spread, and the pass rate. Pure: no I/O.

- The value is the face distance (lower = more alike). `std` is the sample standard deviation
  (ddof=1) and the 95% interval for the mean is Student's t: mean ± t(0.975, n-1)·std/√n. Both need
  at least two values; with fewer they are None rather than a made-up zero-width interval.
- The pass rate is the share of scored shots judged "same". Its 95% interval is Wilson's score
  interval, which stays inside [0, 1] and is sensible for 0/n, n/n and small n, where the textbook
  p ± z·√(p(1-p)/n) collapses to a point or leaves [0, 1].
- A scored shot without a face distance (no face found) counts toward the pass rate, not the mean.

Mean and std use `statistics` (exact rational arithmetic), so identical values give std 0.0 exactly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from contracts import Verdict
from infra.evidence.stats import t_quantile, wilson_interval

CONFIDENCE = 0.95
SCORED_VERDICTS = frozenset(get_args(Verdict))
GROUP_KEYS = ("provider", "scenario")
_Z = statistics.NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959964...


@dataclass(frozen=True)
class ScoreStats:
    count: int  # face distances (scored shots with a face)
    mean: float | None
    std: float | None  # sample standard deviation, ddof=1; None when count < 2
    ci95_low: float | None  # Student-t 95% interval for the mean; None when count < 2
    ci95_high: float | None
    scored: int  # shots with a verdict: the pass rate's denominator
    passed: int  # of those, judged "same"
    pass_rate: float | None  # passed / scored; None when nothing is scored
    pass_ci95_low: float | None  # Wilson score 95% interval for the pass rate
    pass_ci95_high: float | None


def score_stats(values: Sequence[float], verdicts: Sequence[str]) -> ScoreStats:
    """`values`: the face distances; `verdicts`: one per scored shot, with or without a distance."""
    if not all(math.isfinite(value) for value in values):
        raise ValueError("face distances must be finite numbers")
    count = len(values)
    mean = float(statistics.mean(values)) if values else None
    std = ci_low = ci_high = None
    if mean is not None and count >= 2:
        std = float(statistics.stdev(values))
        half = t_quantile(count - 1) * std / math.sqrt(count)
        ci_low, ci_high = mean - half, mean + half
    scored = len(verdicts)
    passed = sum(verdict == "same" for verdict in verdicts)
    pass_low, pass_high = wilson_interval(passed, scored) if scored else (None, None)
    return ScoreStats(
        count=count,
        mean=mean,
        std=std,
        ci95_low=ci_low,
        ci95_high=ci_high,
        scored=scored,
        passed=passed,
        pass_rate=passed / scored if scored else None,
        pass_ci95_low=pass_low,
        pass_ci95_high=pass_high,
    )


def lookup(mapping: Any, *path: str) -> Any:
    """`mapping[a][b]...` in the gateway's JSON, or None where any step is missing or null."""
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def group_label(shot: Mapping[str, Any], key: str) -> str:
    """The shot's provider or scenario; "" when it has none."""
    value = shot.get("provider") if key == "provider" else lookup(shot, "params", "scenario")
    return "" if value is None else str(value)


def shots_stats(shots: Iterable[Mapping[str, Any]]) -> ScoreStats:
    """`score_stats` of the gateway's shot dicts; shots not scored yet (in flight, failed) add nothing."""
    values: list[float] = []
    verdicts: list[str] = []
    for shot in shots:
        verdict = lookup(shot, "score", "verdict")
        if verdict not in SCORED_VERDICTS:
            continue
        verdicts.append(verdict)
        distance = lookup(shot, "score", "face", "distance")
        if isinstance(distance, int | float) and not isinstance(distance, bool):
            values.append(float(distance))
    return score_stats(values, verdicts)


def group_stats(shots: Iterable[Mapping[str, Any]], key: str) -> dict[str, ScoreStats]:
    """Stats per "provider" or per "scenario", in order of first appearance; every shot's group is listed,
    even one whose shots all failed (count 0, scored 0). Shots without a scenario group under ""."""
    if key not in GROUP_KEYS:
        raise ValueError(f"group by one of {', '.join(GROUP_KEYS)}, not {key!r}")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for shot in shots:
        if isinstance(shot, Mapping):
            groups.setdefault(group_label(shot, key), []).append(shot)
    return {label: shots_stats(members) for label, members in groups.items()}
