"""Mean face distance with its Student-t interval, and the pass rate with its Wilson interval."""

from __future__ import annotations

import math
from typing import Any

import pytest

from infra.evidence.stats import wilson_interval
from services.scoring.statistics import ScoreStats, group_stats, score_stats

Z95 = 1.959963984540054  # the standard normal's 0.975 quantile
T95 = {1: 12.706205, 2: 4.302653, 4: 2.776445}  # Student t's 0.975 quantile by degrees of freedom (tables)


def hand_wilson(successes: int, trials: int) -> tuple[float, float]:
    """Wilson's score interval, written out: (p + z²/2n ± z·√(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p, n, z = successes / trials, trials, Z95
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


# --- score_stats ---------------------------------------------------------------------------------


def test_mean_sample_std_and_student_t_interval() -> None:
    stats = score_stats([0.1, 0.2, 0.3], ["same", "same", "same"])

    assert stats.count == 3
    assert stats.mean == pytest.approx(0.2)
    assert stats.std == pytest.approx(0.1), "sample std (ddof=1): sqrt((0.01 + 0 + 0.01) / 2)"
    half = 4.302653 * 0.1 / math.sqrt(3)  # 0.248414
    assert stats.ci95_low == pytest.approx(0.2 - half, abs=1e-6)
    assert stats.ci95_high == pytest.approx(0.2 + half, abs=1e-6)


@pytest.mark.parametrize("values", [[0.4, 0.6], [0.30, 0.35, 0.42, 0.50, 0.81]])
def test_interval_uses_t_with_n_minus_one_degrees_of_freedom(values: list[float]) -> None:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))

    stats = score_stats(values, [])

    assert stats.mean == pytest.approx(mean)
    assert stats.std == pytest.approx(std)
    half = T95[n - 1] * std / math.sqrt(n)
    assert stats.ci95_low == pytest.approx(mean - half, abs=1e-6)
    assert stats.ci95_high == pytest.approx(mean + half, abs=1e-6)


def test_pass_rate_and_its_wilson_interval_for_12_of_15() -> None:
    stats = score_stats([], ["same"] * 12 + ["uncertain", "different", "no_face"])

    assert (stats.scored, stats.passed) == (15, 12)
    assert stats.pass_rate == pytest.approx(0.8)
    low, high = hand_wilson(12, 15)
    assert stats.pass_ci95_low == pytest.approx(low, abs=1e-9)
    assert stats.pass_ci95_high == pytest.approx(high, abs=1e-9)
    assert stats.pass_ci95_low == pytest.approx(0.5481, abs=1e-4), "published value for 12/15"
    assert stats.pass_ci95_high == pytest.approx(0.9295, abs=1e-4)


def test_wilson_interval_at_none_and_all_stays_inside_zero_and_one() -> None:
    # At 0/n the interval is [0, z²/(n+z²)]; at n/n it is [n/(n+z²), 1].
    low, high = wilson_interval(0, 5)
    assert low == 0.0
    assert high == pytest.approx(Z95**2 / (5 + Z95**2))
    low, high = wilson_interval(5, 5)
    assert low == pytest.approx(5 / (5 + Z95**2))
    assert high == 1.0
    for successes in range(6):
        low, high = wilson_interval(successes, 5)
        assert 0.0 <= low <= successes / 5 <= high <= 1.0


@pytest.mark.parametrize(("successes", "trials"), [(1, 0), (-1, 3), (4, 3)])
def test_wilson_interval_refuses_impossible_counts(successes: int, trials: int) -> None:
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(successes, trials)


def test_nothing_scored_gives_no_figures() -> None:
    assert score_stats([], []) == ScoreStats(
        count=0,
        mean=None,
        std=None,
        ci95_low=None,
        ci95_high=None,
        scored=0,
        passed=0,
        pass_rate=None,
        pass_ci95_low=None,
        pass_ci95_high=None,
    )


def test_one_value_has_a_mean_but_no_spread_or_interval() -> None:
    stats = score_stats([0.42], ["same"])

    assert (stats.count, stats.mean) == (1, 0.42)
    assert (stats.std, stats.ci95_low, stats.ci95_high) == (None, None, None)
    low, high = hand_wilson(1, 1)
    assert stats.pass_rate == 1.0
    assert stats.pass_ci95_low == pytest.approx(low)
    assert stats.pass_ci95_high == pytest.approx(high)


def test_identical_values_have_zero_spread_exactly() -> None:
    stats = score_stats([0.3, 0.3, 0.3, 0.3], ["same"] * 4)

    assert (stats.mean, stats.std, stats.ci95_low, stats.ci95_high) == (0.3, 0.0, 0.3, 0.3)


def test_shots_without_a_face_count_for_the_pass_rate_not_the_mean() -> None:
    stats = score_stats([0.3, 0.5], ["same", "no_face", "different"])

    assert stats.count == 2
    assert stats.mean == pytest.approx(0.4)
    assert (stats.scored, stats.passed) == (3, 1)
    assert stats.pass_rate == pytest.approx(1 / 3)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_distances_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        score_stats([0.3, bad], ["same", "same"])


# --- group_stats ---------------------------------------------------------------------------------


def shot(
    scenario: str | None, verdict: str | None, distance: float | None, provider: str = "sim", status: str = "scored"
) -> dict[str, Any]:
    return {
        "provider": provider,
        "status": status,
        "params": {"prompt": "p", "scenario": scenario},
        "score": None
        if verdict is None
        else {"verdict": verdict, "face": {"faces_found": 0 if distance is None else 1, "distance": distance}},
    }


SHOTS = [
    shot("portrait", "same", 0.30),
    shot("noir", "different", 0.80, provider="fal"),
    shot("portrait", "same", 0.40),
    shot("noir", "no_face", None),
    shot("portrait", None, None, status="failed"),
    shot("noir", "same", 0.50, provider="fal"),
    shot(None, "uncertain", 0.58),
    shot("portrait", None, None, status="generating"),
]


def test_group_by_scenario_in_order_of_first_appearance() -> None:
    groups = group_stats(SHOTS, "scenario")

    assert list(groups) == ["portrait", "noir", ""], "a shot without a scenario groups under the empty label"
    assert groups["portrait"] == score_stats([0.30, 0.40], ["same", "same"]), "failed and in-flight shots add nothing"
    assert groups["noir"] == score_stats([0.80, 0.50], ["different", "no_face", "same"])
    assert groups[""] == score_stats([0.58], ["uncertain"])
    assert groups["noir"].count == 2
    assert groups["noir"].scored == 3


def test_group_by_provider() -> None:
    groups = group_stats(SHOTS, "provider")

    assert list(groups) == ["sim", "fal"]
    assert groups["sim"] == score_stats([0.30, 0.40, 0.58], ["same", "same", "no_face", "uncertain"])
    assert groups["fal"] == score_stats([0.80, 0.50], ["different", "same"])
    assert groups["fal"].mean == pytest.approx(0.65)


def test_a_group_whose_shots_all_failed_is_listed_empty() -> None:
    groups = group_stats([shot("action", None, None, status="failed")], "scenario")

    assert groups == {"action": score_stats([], [])}


def test_unknown_verdicts_and_non_numeric_distances_are_not_scored() -> None:
    odd = shot("x", "same", 0.3)
    odd["score"]["face"]["distance"] = "0.3"
    pending = shot("x", "maybe", 0.2)

    stats = group_stats([odd, pending], "scenario")["x"]

    assert (stats.count, stats.scored, stats.passed) == (0, 1, 1)


def test_group_stats_refuses_other_keys() -> None:
    with pytest.raises(ValueError, match="provider, scenario"):
        group_stats(SHOTS, "verdict")
