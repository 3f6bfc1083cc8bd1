"""infra.evidence.scorecard and infra.evidence.costs, with figures worked out by hand."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from infra.evidence.costs import break_even, project_costs
from infra.evidence.scorecard import (
    DEFAULT_QUALITATIVE,
    QualitativeScores,
    ScorecardAnchors,
    ScorecardWeights,
    score_providers,
    tier,
)
from infra.evidence.summary import GroupSummary, summarize
from tests.unit.test_evidence import identity, shot


def summary(provider: str = "fal-flux-lora", strategy: str = "lora", **figures: Any) -> GroupSummary:
    """A provider-level summary, its figures set directly."""
    (base,) = summarize([shot(provider, strategy=strategy)], [identity(provider, strategy=strategy)])
    return dataclasses.replace(base, **figures)


MEASURED: dict[str, Any] = {
    "passed": 8,
    "shots_scored": 10,
    "pass_rate": 0.8,
    "training_mean_s": 1800.0,
    "training_n": 2,
    "latency_p50_ms": 15_000.0,
    "cost_per_shot_usd": 0.05,
}


# --- weights -------------------------------------------------------------------------------------


def test_default_weights_sum_to_one() -> None:
    assert sum(ScorecardWeights().as_dict().values()) == pytest.approx(1.0)
    assert ScorecardWeights().as_dict()["consistency"] == 0.30


def test_weights_that_do_not_sum_to_one_are_refused_saying_what_they_sum_to() -> None:
    with pytest.raises(ValueError, match=r"sum to 1, but they sum to 1\.1"):
        ScorecardWeights(consistency=0.40)
    with pytest.raises(ValueError, match="finite and >= 0"):
        ScorecardWeights(consistency=0.5, training_time=-0.05)


# --- scores --------------------------------------------------------------------------------------


def test_scores_and_total_worked_by_hand() -> None:
    (row,) = score_providers([summary(**MEASURED)])

    scores = {c.name: c.score for c in row.criteria}
    assert scores == {
        "consistency": pytest.approx(80.0),
        "training_time": pytest.approx(50.0),  # 1 - 1800/3600
        "inference_latency": pytest.approx(75.0),  # 1 - 15000/60000
        "cost": pytest.approx(75.0),  # 1 - 0.05/0.20
        "integration_effort": 70.0,  # judged: fal-flux-lora in the default table
        "browser_compatibility": 90.0,
    }
    # 0.3*80 + 0.15*50 + 0.2*75 + 0.15*75 + 0.1*70 + 0.1*90
    assert row.total == pytest.approx(73.75)
    assert row.tier == 1
    assert row.missing == ()
    bases = {c.name: c.basis for c in row.criteria}
    assert bases["consistency"] == bases["cost"] == "measured"
    assert bases["integration_effort"] == bases["browser_compatibility"] == "judged"


def test_a_criterion_without_data_is_left_out_and_the_rest_renormalised() -> None:
    figures: dict[str, Any] = {**MEASURED, "latency_p50_ms": None, "latency_n": 0}

    (row,) = score_providers([summary("unlisted-provider", **figures)])

    assert row.missing == ("inference_latency", "integration_effort", "browser_compatibility")
    # present weights 0.3 + 0.15 + 0.15 = 0.6: (0.3*80 + 0.15*50 + 0.15*75) / 0.6
    assert row.total == pytest.approx((24 + 7.5 + 11.25) / 0.6)  # 71.25
    assert row.criterion("consistency").effective_weight == pytest.approx(0.5)
    assert row.criterion("inference_latency").effective_weight == 0.0
    assert row.criterion("inference_latency").basis == "missing"


def test_figures_beyond_the_anchor_score_zero_not_negative() -> None:
    figures: dict[str, Any] = {**MEASURED, "training_mean_s": 7200.0, "cost_per_shot_usd": 0.5, "latency_p50_ms": 0.0}

    (row,) = score_providers([summary(**figures)], anchors=ScorecardAnchors(training_s_worst=3600))

    assert row.criterion("training_time").score == 0.0
    assert row.criterion("cost").score == 0.0
    assert row.criterion("inference_latency").score == 100.0


def test_instant_reference_without_training_time_scores_full_marks_by_design() -> None:
    instant = summary("fal-instant-character", "instant_reference", training_mean_s=None, training_n=0)
    lora = summary("fal-flux-lora", "lora", training_mean_s=None, training_n=0)

    instant_row, lora_row = score_providers([instant, lora])

    assert instant_row.criterion("training_time").score == 100.0
    assert instant_row.criterion("training_time").basis == "by_design"
    assert lora_row.criterion("training_time").score is None
    assert "training_time" in lora_row.missing


def test_no_scored_shots_means_no_consistency_score() -> None:
    (row,) = score_providers([summary(pass_rate=None, shots_scored=0, passed=0)])

    assert row.criterion("consistency").score is None
    assert "consistency" in row.missing


@pytest.mark.parametrize(
    ("total", "expected"),
    [(100.0, 1), (70.0, 1), (69.99999999999999, 1), (69.99, 2), (50.0, 2), (49.99, 3), (0.0, 3)],
)
def test_tiers_at_70_and_50(total: float, expected: int) -> None:
    assert tier(total) == expected


@pytest.mark.parametrize(("pass_rate", "expected_tier"), [(0.7, 1), (0.69, 2), (0.5, 2), (0.49, 3)])
def test_rows_take_their_tier_from_the_total(pass_rate: float, expected_tier: int) -> None:
    weights = ScorecardWeights(
        consistency=1.0, training_time=0, inference_latency=0, cost=0, integration_effort=0, browser_compatibility=0
    )

    (row,) = score_providers([summary(**{**MEASURED, "pass_rate": pass_rate})], weights=weights)

    assert row.total == pytest.approx(100 * pass_rate)
    assert row.tier == expected_tier


def test_a_custom_qualitative_table_replaces_the_default() -> None:
    table = {"fal-flux-lora": QualitativeScores(integration_effort=10, browser_compatibility=20)}

    (row,) = score_providers([summary(**MEASURED)], qualitative=table)

    assert row.criterion("integration_effort").score == 10.0
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        QualitativeScores(integration_effort=120, browser_compatibility=0)


def test_the_default_table_covers_every_provider_and_comfyui_is_judged_hard_to_host() -> None:
    assert set(DEFAULT_QUALITATIVE) == {
        "sim",
        "fal-instant-character",
        "fal-flux-lora",
        "fal-flux-redux",
        "astria-tune",
        "replicate-flux-lora",
        "leonardo-character-reference",
        "comfyui-ipadapter",
        "comfyui-instantid",
        "comfyui-reference-only",
    }
    hosted = DEFAULT_QUALITATIVE["fal-instant-character"]
    for name in ("comfyui-ipadapter", "comfyui-instantid", "comfyui-reference-only"):
        assert DEFAULT_QUALITATIVE[name].integration_effort < hosted.integration_effort
        assert DEFAULT_QUALITATIVE[name].browser_compatibility < hosted.browser_compatibility


def test_the_scorecard_refuses_scenario_rows() -> None:
    with pytest.raises(ValueError, match="grouped by provider alone"):
        score_providers([summary(scenario="portrait")])


# --- costs ---------------------------------------------------------------------------------------

INSTANT: dict[str, Any] = {"cost_per_shot_usd": 0.10, "cost_per_identity_usd": 0.0}
LORA: dict[str, Any] = {"cost_per_shot_usd": 0.04, "cost_per_identity_usd": 2.0}


def test_monthly_projection_by_hand() -> None:
    rows = project_costs(
        [summary("inst", "instant_reference", **INSTANT), summary("lora", "lora", **LORA)], characters=10
    )

    monthly = {(p.provider, p.shots_per_month): p.monthly_cost_usd for p in rows}
    assert monthly == {
        ("inst", 1_000): pytest.approx(100.0),
        ("inst", 10_000): pytest.approx(1_000.0),
        ("inst", 100_000): pytest.approx(10_000.0),
        ("lora", 1_000): pytest.approx(60.0),  # 1000 x 0.04 + 10 x 2
        ("lora", 10_000): pytest.approx(420.0),
        ("lora", 100_000): pytest.approx(4_020.0),
    }


def test_a_provider_missing_a_figure_is_skipped_with_the_reason() -> None:
    (row,) = project_costs([summary(cost_per_identity_usd=None)], characters=3, volumes=(100,))

    assert row.monthly_cost_usd is None
    assert row.skipped == "no measured cost per identity"


def test_break_even_by_hand() -> None:
    rows = break_even([summary("inst", "instant_reference", **INSTANT), summary("lora", "lora", **LORA)])

    (row,) = rows
    # 0 + n x 0.10 = 2 + n x 0.04  ->  n = 2 / 0.06
    assert row.shots_per_character == pytest.approx(100 / 3)
    assert (row.cheaper_below, row.cheaper_above) == ("inst", "lora")
    assert row.statement == "inst is cheaper below 33.3 shots per character, lora above"


def test_break_even_says_when_one_is_always_cheaper_and_skips_same_strategy_pairs() -> None:
    rows = break_even(
        [
            summary("lora", "lora", **LORA),
            summary("tune", "fine_tune", cost_per_shot_usd=0.03, cost_per_identity_usd=1.0),
            summary("lora-too", "lora", cost_per_shot_usd=0.01, cost_per_identity_usd=0.5),
            summary("nocost", "instant_reference", cost_per_shot_usd=None, cost_per_identity_usd=0.0),
        ]
    )

    pairs = {(r.provider_a, r.provider_b): r for r in rows}
    assert ("lora", "lora-too") not in pairs, "same strategy: nothing to break even"
    always = pairs[("lora", "tune")]
    assert always.shots_per_character is None
    assert (always.cheaper_below, always.cheaper_above) == ("tune", "tune")
    assert always.statement.startswith("tune is always cheaper")
    skipped = pairs[("lora", "nocost")]
    assert skipped.skipped == "nocost: no measured cost per shot"
    assert skipped.shots_per_character is None


def test_cost_figures_refuse_scenario_rows() -> None:
    with pytest.raises(ValueError, match="not scenario"):
        project_costs([summary(scenario="portrait")], characters=1)
