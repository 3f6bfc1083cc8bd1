"""infra.evidence.stats: hand-worked helpers, Welch and Mann-Whitney checked against scipy, Holm, conclusions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from infra.evidence.facts import ShotFact
from infra.evidence.stats import (
    compare_providers,
    hedges_g,
    holm_adjust,
    mann_whitney,
    percentile,
    spread,
    welch_test,
    wilson_interval,
)
from tests.unit.test_evidence import hand_wilson, shot

# --- helpers by hand -----------------------------------------------------------------------------


def test_spread_mean_sample_std_and_t_interval() -> None:
    result = spread([0.1, 0.2, 0.3])

    assert result.n == 3
    assert result.mean == pytest.approx(0.2)
    assert result.std == pytest.approx(0.1)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert result.ci95_low == pytest.approx(0.2 - half, abs=1e-6)
    assert result.ci95_high == pytest.approx(0.2 + half, abs=1e-6)
    assert spread([]).mean is None
    assert spread([0.5]).std is None


@pytest.mark.parametrize(("successes", "trials"), [(0, 5), (3, 10), (7, 7), (1, 1)])
def test_wilson_interval_by_hand(successes: int, trials: int) -> None:
    low, high = wilson_interval(successes, trials)
    expected_low, expected_high = hand_wilson(successes, trials)

    assert low == pytest.approx(max(0.0, expected_low), abs=1e-12)
    assert high == pytest.approx(min(1.0, expected_high), abs=1e-12)
    assert 0.0 <= low <= successes / trials <= high <= 1.0


def test_percentile_interpolates_linearly_between_closest_ranks() -> None:
    values = [4000.0, 1000.0, 3000.0, 2000.0]

    assert percentile(values, 50) == 2500.0
    assert percentile(values, 95) == pytest.approx(3850.0)  # position 3 x 0.95 = 2.85
    assert percentile(values, 0) == 1000.0
    assert percentile([], 50) is None


def test_welch_and_hedges_g_by_hand() -> None:
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0]  # means 2 and 6, variances 1 and 2.5

    result = welch_test(a, b)

    se2 = 1 / 3 + 2.5 / 5
    assert result.t == pytest.approx(-4 / math.sqrt(se2))
    assert result.df == pytest.approx(se2**2 / ((1 / 3) ** 2 / 2 + (2.5 / 5) ** 2 / 4))  # 5.882
    pooled = math.sqrt((2 * 1 + 4 * 2.5) / 6)
    assert hedges_g(a, b) == pytest.approx(-4 / pooled * (1 - 3 / 23)), "negative: A's mean is lower"


def test_rank_biserial_is_minus_one_when_every_a_is_below_every_b() -> None:
    result = mann_whitney([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])

    assert (result.u, result.rank_biserial, result.method) == (0.0, -1.0, "exact")
    assert result.p == pytest.approx(2 / math.comb(6, 3))  # the one most extreme ordering, both tails


def samples(seed: int, na: int, nb: int, decimals: int | None) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.40, 0.08, na), rng.normal(0.46, 0.10, nb)
    if decimals is not None:  # rounding makes ties
        a, b = np.round(a, decimals), np.round(b, decimals)
    return [float(x) for x in a], [float(x) for x in b]


CASES = [
    (1, 3, 4, None),  # exact Mann-Whitney, tiny samples
    (2, 8, 30, None),  # exact: one sample has 8
    (3, 12, 15, None),  # asymptotic
    (4, 10, 10, 1),  # ties: asymptotic with the tie correction
    (5, 2, 2, None),
    (6, 40, 25, 2),
]


@pytest.mark.parametrize(("seed", "na", "nb", "decimals"), CASES)
def test_welch_agrees_with_scipy(seed: int, na: int, nb: int, decimals: int | None) -> None:
    a, b = samples(seed, na, nb, decimals)

    ours = welch_test(a, b)
    theirs = scipy_stats.ttest_ind(a, b, equal_var=False)

    assert ours.t == pytest.approx(float(theirs.statistic), rel=1e-9)
    assert ours.p == pytest.approx(float(theirs.pvalue), rel=1e-9)
    assert ours.df == pytest.approx(float(theirs.df), rel=1e-9)


@pytest.mark.parametrize(("seed", "na", "nb", "decimals"), CASES)
def test_mann_whitney_agrees_with_scipy(seed: int, na: int, nb: int, decimals: int | None) -> None:
    a, b = samples(seed, na, nb, decimals)

    ours = mann_whitney(a, b)
    theirs = scipy_stats.mannwhitneyu(a, b, alternative="two-sided")

    assert ours.u == pytest.approx(float(theirs.statistic), rel=1e-12)
    assert ours.p == pytest.approx(float(theirs.pvalue), rel=1e-9)


def test_holm_adjustment_by_hand() -> None:
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept monotone at 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([None, 0.02, 0.5]) == [None, pytest.approx(0.04), 0.5], "None is not counted in m"
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0], "capped at 1"


# --- compare_providers ---------------------------------------------------------------------------

# Rounded draws (seed 24 of N(0.40|0.46|0.43, 0.06), n=12): A vs B has raw Welch p 0.023, Mann-Whitney 0.030,
# but the other two pairs are close, so A-B's p is the smallest of three and Holm multiplies it by 3.
BORDERLINE = {
    "a-prov": [0.481, 0.421, 0.33, 0.389, 0.38, 0.386, 0.436, 0.323, 0.458, 0.332, 0.389, 0.453],
    "b-prov": [0.5, 0.419, 0.566, 0.482, 0.403, 0.463, 0.41, 0.486, 0.379, 0.489, 0.354, 0.526],
    "c-prov": [0.446, 0.511, 0.387, 0.304, 0.348, 0.415, 0.548, 0.464, 0.509, 0.377, 0.398, 0.41],
}


def distances(provider: str, values: list[float], simulated: bool = False) -> list[ShotFact]:
    return [shot(provider, face_distance=value, simulated=simulated) for value in values]


def test_clearly_different_providers_get_a_conclusion_naming_the_more_consistent() -> None:
    rng = np.random.default_rng(7)
    good = [float(x) for x in rng.normal(0.30, 0.03, 20)]
    bad = [float(x) for x in rng.normal(0.65, 0.05, 20)]

    (comparison,) = compare_providers(distances("zeta-good", good) + distances("alpha-bad", bad))

    assert (comparison.provider_a, comparison.provider_b) == ("alpha-bad", "zeta-good")
    assert comparison.better == "zeta-good"
    assert comparison.conclusion.startswith("zeta-good is more consistent than alpha-bad (lower face distance; ")
    assert "Welch p_adj=" in comparison.conclusion
    assert "g=" in comparison.conclusion
    assert comparison.mean_difference is not None
    assert comparison.mean_difference > 0, "A minus B: the worse provider is A here"
    assert comparison.hedges_g is not None
    assert comparison.hedges_g > 0
    assert comparison.rank_biserial == 1.0
    assert comparison.welch_p_adjusted == comparison.welch_p, "one pair: Holm changes nothing"


def test_equal_providers_get_no_conclusion() -> None:
    values = [0.31, 0.35, 0.42, 0.38, 0.45, 0.29, 0.40]

    (comparison,) = compare_providers(distances("one", values) + distances("two", list(reversed(values))))

    assert comparison.better is None
    assert comparison.welch_p == pytest.approx(1.0)
    assert comparison.mannwhitney_p == pytest.approx(1.0)
    assert comparison.conclusion.startswith("no significant difference between one and two at alpha=0.05 (n=7 and 7")


def test_holm_takes_away_a_difference_that_was_significant_only_before_adjustment() -> None:
    shots = [s for provider, values in BORDERLINE.items() for s in distances(provider, values)]

    comparisons = compare_providers(shots)

    ab = next(c for c in comparisons if (c.provider_a, c.provider_b) == ("a-prov", "b-prov"))
    assert ab.welch_p is not None
    assert ab.mannwhitney_p is not None
    assert ab.welch_p < 0.05
    assert ab.mannwhitney_p < 0.05
    assert ab.welch_p_adjusted == pytest.approx(3 * ab.welch_p)
    assert ab.better is None
    assert ab.conclusion.startswith("no significant difference between a-prov and b-prov")
    (alone,) = compare_providers([s for s in shots if s.provider != "c-prov"])
    assert alone.better == "a-prov", "the same pair alone, unadjusted, is significant"


def test_welch_alone_is_not_enough_mann_whitney_must_agree() -> None:
    # seed 127: Welch p = 0.028, Mann-Whitney p = 0.065
    a = [0.271, 0.253, 0.437, 0.361, 0.263, 0.529, 0.49, 0.298]
    b = [0.459, 0.424, 0.518, 0.444, 0.452, 0.539, 0.501, 0.433]

    (comparison,) = compare_providers(distances("a", a) + distances("b", b))

    assert comparison.welch_p is not None
    assert comparison.welch_p < 0.05
    assert comparison.mannwhitney_p is not None
    assert comparison.mannwhitney_p > 0.05
    assert comparison.better is None
    (lenient,) = compare_providers(distances("a", a) + distances("b", b), alpha=0.10)
    assert lenient.better == "a"


def test_too_few_values_say_so_and_take_no_part_in_the_adjustment() -> None:
    shots = distances("lonely", [0.3]) + distances("x", [0.30, 0.31, 0.32]) + distances("y", [0.60, 0.62, 0.61])
    shots.append(shot("lonely", status="failed", face_distance=None))

    comparisons = {(c.provider_a, c.provider_b): c for c in compare_providers(shots)}

    lonely = comparisons[("lonely", "x")]
    assert lonely.too_few is True
    assert lonely.welch_p is None
    assert (
        lonely.conclusion == "too few values to compare lonely (n=1) and x (n=3) on face distance: need at least 2 each"
    )
    assert comparisons[("x", "y")].welch_p_adjusted == comparisons[("x", "y")].welch_p, "only one pair was tested"


def test_for_clip_metrics_higher_is_better_and_uncalibrated_is_flagged() -> None:
    rng = np.random.default_rng(3)
    high = [shot("high", clip_image=float(x), clip_calibrated=False) for x in rng.normal(0.9, 0.01, 15)]
    low = [shot("low", clip_image=float(x), clip_calibrated=False) for x in rng.normal(0.7, 0.01, 15)]

    (comparison,) = compare_providers(high + low, metric="clip_image")

    assert comparison.better == "high"
    assert comparison.conclusion.startswith("high looks more like the references (CLIP-I) than low (higher CLIP-I;")
    assert comparison.clip_uncalibrated is True
    assert comparison.simulated is False


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="metric must be one of"):
        compare_providers([], metric="vibes")
