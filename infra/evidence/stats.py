"""Small statistics for the reports, and the pairwise provider comparison. Pure: no I/O.

Helpers (the same ideas as `services/scoring/statistics.py`, rewritten here because infra does not import
services): `spread` (mean, sample std, Student-t 95% interval), `wilson_interval`, `percentile` (linear
interpolation), `welch_test`, `mann_whitney`, `hedges_g`, `holm_adjust`.

`compare_providers` runs, for every pair of providers, Welch's t-test and the Mann-Whitney U test on one
metric, with Holm-Bonferroni adjusted p-values across all the pairs it could test, and says in words what
the data support. Sign conventions: every difference and effect size is "A minus B", A being the first
provider of the pair in alphabetical order. For face distance a positive difference means A's shots are
*less* like the references than B's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np
from scipy import special

from infra.evidence.facts import ShotFact

CONFIDENCE = 0.95
_Z = statistics.NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959964...

# metric -> (True when lower is better, label in sentences, the comparative a "better" provider earns)
METRICS: dict[str, tuple[bool, str, str]] = {
    "face_distance": (True, "face distance", "is more consistent than"),
    "clip_image": (False, "CLIP-I", "looks more like the references (CLIP-I) than"),
    "clip_text": (False, "CLIP-T", "follows the prompt more closely (CLIP-T) than"),
}


@dataclass(frozen=True)
class Spread:
    """Mean with its spread. `std` is the sample standard deviation (ddof=1); the 95% interval for the mean is
    Student's t, mean ± t(0.975, n-1)·std/√n. std and the interval are None below two values."""

    n: int
    mean: float | None
    std: float | None
    ci95_low: float | None
    ci95_high: float | None


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The (1 + confidence) / 2 quantile of Student's t with `df` degrees of freedom."""
    return float(special.stdtrit(df, 0.5 + confidence / 2))


def spread(values: Sequence[float]) -> Spread:
    n = len(values)
    if n == 0:
        return Spread(0, None, None, None, None)
    mean = float(statistics.fmean(values))
    if n < 2:
        return Spread(n, mean, None, None, None)
    std = float(statistics.stdev(values))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


def wilson_interval(successes: int, trials: int, z: float = _Z) -> tuple[float, float]:
    """Wilson's score interval for a proportion: stays inside [0, 1] and is sensible at 0/n and n/n."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between the closest ranks: position (n-1)·q/100
    in the sorted values (Hyndman & Fan type 7, numpy's default, Excel's PERCENTILE.INC). None when empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q, method="linear"))


@dataclass(frozen=True)
class WelchResult:
    t: float | None  # None when both samples have zero variance (the test is undefined)
    df: float | None
    p: float | None  # two-sided


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's unequal-variance t-test, two-sided: t = (mean_a - mean_b) / √(s²a/na + s²b/nb), degrees of
    freedom by Welch-Satterthwaite. Needs at least two values in each sample."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least 2 values in each sample, got {len(a)} and {len(b)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return WelchResult(None, None, None)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = float(2 * special.stdtr(df, -abs(t)))
    return WelchResult(float(t), float(df), min(1.0, p))


@dataclass(frozen=True)
class MannWhitneyResult:
    u: float  # U of sample A: pairs (a, b) with a > b, ties counting one half
    p: float  # two-sided
    rank_biserial: float  # 2·U/(na·nb) - 1, in [-1, 1]; positive when A's values tend to be larger
    method: str  # "exact" or "asymptotic"


def _average_ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """1-based ranks with ties given their average rank, and the size of every tie group."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = [0.0] * len(values)
    ties: list[int] = []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        ties.append(end - start + 1)
        start = end + 1
    return ranks, ties


def _exact_u_counts(m: int, n: int) -> list[int]:
    """How many of the C(m+n, m) orderings give U = 0, 1, ..., m·n: the coefficients of the Gaussian
    binomial [m+n choose m]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i), in exact integers."""
    m, n = min(m, n), max(m, n)
    coefficients = [1] + [0] * (m * n)
    for i in range(1, m + 1):
        for power in range(m * n, n + i - 1, -1):  # multiply by (1 - q^(n+i))
            coefficients[power] -= coefficients[power - n - i]
        for power in range(i, m * n + 1):  # divide by (1 - q^i): a running sum with stride i
            coefficients[power] += coefficients[power - i]
    return coefficients


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test, choosing its method as scipy's `mannwhitneyu(method="auto")` does:
    exact when either sample has at most 8 values and there are no ties, else the normal approximation with
    the tie correction and a continuity correction of 1/2."""
    if not a or not b:
        raise ValueError("the Mann-Whitney test needs at least one value in each sample")
    na, nb = len(a), len(b)
    ranks, ties = _average_ranks([*a, *b])
    u_a = sum(ranks[:na]) - na * (na + 1) / 2
    u_big = max(u_a, na * nb - u_a)
    if (na <= 8 or nb <= 8) and all(size == 1 for size in ties):
        counts = _exact_u_counts(na, nb)
        p = 2 * sum(counts[round(u_big) :]) / math.comb(na + nb, na)
        method = "exact"
    else:
        total = na + nb
        tie_term = sum(size**3 - size for size in ties)
        sd = math.sqrt(na * nb / 12 * ((total + 1) - tie_term / (total * (total - 1))))
        p = 2 * float(special.ndtr(-(u_big - na * nb / 2 - 0.5) / sd)) if sd > 0 else 1.0
        method = "asymptotic"
    return MannWhitneyResult(float(u_a), min(1.0, p), 2 * u_a / (na * nb) - 1, method)


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float | None:
    """(mean_a - mean_b) / pooled sample std, times Hedges' small-sample correction J = 1 - 3/(4·df - 1),
    df = na + nb - 2. Positive when A's values are larger. None when both samples are constant."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Hedges' g needs at least 2 values in each sample, got {len(a)} and {len(b)}")
    df = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)) / df)
    if pooled == 0:
        return None
    return (statistics.fmean(a) - statistics.fmean(b)) / pooled * (1 - 3 / (4 * df - 1))


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjustment over the p-values that exist (None stays None and is not counted):
    the k-th smallest of m becomes max over j <= k of min(1, (m - j + 1)·p_(j))."""
    present = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """One pair of providers on one metric. Differences and effect sizes are A minus B."""

    metric: str
    provider_a: str
    provider_b: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    mean_difference: float | None  # mean_a - mean_b
    welch_t: float | None
    welch_df: float | None
    welch_p: float | None
    welch_p_adjusted: float | None  # Holm-Bonferroni over every pair's Welch p
    mannwhitney_u: float | None  # U of A
    mannwhitney_p: float | None
    mannwhitney_p_adjusted: float | None  # Holm-Bonferroni over every pair's Mann-Whitney p
    rank_biserial: float | None  # positive: A's values tend to be larger
    hedges_g: float | None  # positive: A's mean is larger
    too_few: bool  # fewer than 2 values on either side: nothing was tested
    better: str | None  # the provider the data support as better, when they do
    conclusion: str
    simulated: bool
    clip_uncalibrated: bool  # a CLIP metric on random weights: the comparison means nothing yet


def _value(shot: ShotFact, metric: str) -> float | None:
    if metric == "face_distance":
        return shot.face_distance
    return shot.clip_image if metric == "clip_image" else shot.clip_text


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def compare_providers(
    shots: Iterable[ShotFact], *, metric: str = "face_distance", alpha: float = 0.05
) -> list[Comparison]:
    """Every pair of providers (alphabetical, A before B) on `metric`, over scored shots that have it.

    A difference is claimed only when the Holm-adjusted Welch p and the Holm-adjusted Mann-Whitney p are both
    below `alpha` and the two tests point the same way (mean difference and rank-biserial of the same sign).
    Pairs with fewer than 2 values on either side are `too_few` and take no part in the adjustment."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    lower_is_better, label, comparative = METRICS[metric]
    values: dict[str, list[float]] = {}
    simulated: dict[str, bool] = {}
    uncalibrated: dict[str, bool] = {}
    for shot in shots:
        values.setdefault(shot.provider, [])
        simulated[shot.provider] = simulated.get(shot.provider, False) or shot.simulated
        value = _value(shot, metric)
        if shot.status == "scored" and value is not None:
            values[shot.provider].append(value)
            if metric != "face_distance" and not shot.clip_calibrated:
                uncalibrated[shot.provider] = True
    pairs = list(combinations(sorted(values), 2))
    tests: dict[tuple[str, str], tuple[WelchResult, MannWhitneyResult]] = {}
    for a, b in pairs:
        if len(values[a]) >= 2 and len(values[b]) >= 2:
            tests[(a, b)] = (welch_test(values[a], values[b]), mann_whitney(values[a], values[b]))
    tested = list(tests)
    welch_adjusted = dict(zip(tested, holm_adjust([tests[pair][0].p for pair in tested]), strict=True))
    mwu_adjusted = dict(zip(tested, holm_adjust([tests[pair][1].p for pair in tested]), strict=True))
    comparisons = []
    for a, b in pairs:
        xa, xb = values[a], values[b]
        mean_a = statistics.fmean(xa) if xa else None
        mean_b = statistics.fmean(xb) if xb else None
        difference = mean_a - mean_b if mean_a is not None and mean_b is not None else None
        untested = Comparison(
            metric=metric,
            provider_a=a,
            provider_b=b,
            n_a=len(xa),
            n_b=len(xb),
            mean_a=mean_a,
            mean_b=mean_b,
            mean_difference=difference,
            welch_t=None,
            welch_df=None,
            welch_p=None,
            welch_p_adjusted=None,
            mannwhitney_u=None,
            mannwhitney_p=None,
            mannwhitney_p_adjusted=None,
            rank_biserial=None,
            hedges_g=None,
            too_few=True,
            better=None,
            conclusion=f"too few values to compare {a} (n={len(xa)}) and {b} (n={len(xb)}) on {label}: "
            "need at least 2 each",
            simulated=simulated[a] or simulated[b],
            clip_uncalibrated=uncalibrated.get(a, False) or uncalibrated.get(b, False),
        )
        if (a, b) not in tests or difference is None:
            comparisons.append(untested)
            continue
        welch, mwu = tests[(a, b)]
        g = hedges_g(xa, xb)
        p_welch, p_mwu = welch_adjusted[(a, b)], mwu_adjusted[(a, b)]
        agree = difference * mwu.rank_biserial > 0
        better = None
        if p_welch is not None and p_welch < alpha and p_mwu is not None and p_mwu < alpha and agree:
            better = (a if difference < 0 else b) if lower_is_better else (a if difference > 0 else b)
            worse = b if better == a else a
            direction = "lower" if lower_is_better else "higher"
            conclusion = (
                f"{better} {comparative} {worse} ({direction} {label}; Welch p_adj={_fmt(p_welch)}, "
                f"Mann-Whitney p_adj={_fmt(p_mwu)}, g={_fmt(g)})"
            )
        else:
            undefined = " (Welch undefined: both samples constant)" if welch.p is None else ""
            conclusion = (
                f"no significant difference between {a} and {b} at alpha={alpha:g} "
                f"(n={len(xa)} and {len(xb)}, {label} means {_fmt(mean_a)} and {_fmt(mean_b)}; "
                f"Welch p_adj={_fmt(p_welch)}{undefined}, Mann-Whitney p_adj={_fmt(p_mwu)})"
            )
        comparisons.append(
            replace(
                untested,
                welch_t=welch.t,
                welch_df=welch.df,
                welch_p=welch.p,
                welch_p_adjusted=p_welch,
                mannwhitney_u=mwu.u,
                mannwhitney_p=mwu.p,
                mannwhitney_p_adjusted=p_mwu,
                rank_biserial=mwu.rank_biserial,
                hedges_g=g,
                too_few=False,
                better=better,
                conclusion=conclusion,
            )
        )
    return comparisons
