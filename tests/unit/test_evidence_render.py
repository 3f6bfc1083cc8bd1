"""infra.evidence.render: JSON-ready dicts, stable CSV, and the provenance notes."""

from __future__ import annotations

import csv
import io
import json

import pytest

from infra.evidence.costs import break_even, project_costs
from infra.evidence.facts import IdentityFact, ShotFact
from infra.evidence.render import (
    SIMULATED_NOTE,
    UNCALIBRATED_NOTE,
    report_csv,
    report_json,
    rounded,
)
from infra.evidence.scorecard import ScorecardRow, score_providers
from infra.evidence.stats import compare_providers
from infra.evidence.summary import GroupSummary, summarize
from tests.unit.test_evidence import identity, shot

SUMMARY_HEADER = (
    "provider,scenario,strategy,strategies,shots_requested,shots_scored,shots_failed,shots_pending,"
    "identity_n,identity_mean,identity_std,identity_ci95_low,identity_ci95_high,"
    "passed,pass_rate,pass_ci95_low,pass_ci95_high,"
    "clip_image_n,clip_image_mean,clip_image_std,clip_image_ci95_low,clip_image_ci95_high,"
    "clip_text_n,clip_text_mean,clip_text_std,clip_text_ci95_low,clip_text_ci95_high,clip_uncalibrated,"
    "latency_n,latency_p50_ms,latency_p95_ms,"
    "identities,identities_ready,identities_failed,training_n,training_mean_s,"
    "cost_per_shot_usd,shot_cost_total_usd,cost_per_identity_usd,failures,simulated,"
    "takes_regenerated,takes_fallback,rescued_by_fallback,note"
)
SCORECARD_HEADER = (
    "provider,total,tier,missing,"
    "consistency_score,consistency_basis,consistency_weight,"
    "training_time_score,training_time_basis,training_time_weight,"
    "inference_latency_score,inference_latency_basis,inference_latency_weight,"
    "cost_score,cost_basis,cost_weight,"
    "integration_effort_score,integration_effort_basis,integration_effort_weight,"
    "browser_compatibility_score,browser_compatibility_basis,browser_compatibility_weight,"
    "simulated,clip_uncalibrated,note"
)


def simulated_facts() -> tuple[list[ShotFact], list[IdentityFact]]:
    shots = [
        shot("sim", face_distance=d, simulated=True, clip_calibrated=False, latency_ms=1000.0 + 100 * i)
        for i, d in enumerate([0.31, 0.33, 0.36, 0.29])
    ] + [shot("sim", status="failed", face_distance=None, latency_ms=None, simulated=True)]
    real = [shot("fal-instant-character", face_distance=d) for d in [0.41, 0.45, 0.39]]
    identities = [identity("sim", simulated=True), identity("fal-instant-character")]
    return shots + real, identities


def test_report_json_is_serialisable_and_says_it_is_simulated() -> None:
    shots, identities = simulated_facts()
    summaries = summarize(shots, identities)

    report = report_json(
        summaries=summaries,
        comparisons=compare_providers(shots),
        scorecard=score_providers(summaries),
        projections=project_costs(summaries, characters=2),
        break_evens=break_even(summaries),
    )

    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert report["simulated"] is True
    assert report["clip_uncalibrated"] is True
    assert report["note"] == f"{SIMULATED_NOTE}; {UNCALIBRATED_NOTE}"
    by_provider = {row["provider"]: row for row in report["summaries"]}
    assert by_provider["sim"]["simulated"] is True
    assert SIMULATED_NOTE in by_provider["sim"]["note"]
    assert by_provider["fal-instant-character"]["note"] is None, "real, calibrated figures carry no note"
    assert by_provider["sim"]["identity"]["n"] == 4
    assert by_provider["fal-instant-character"]["pass_ci95_low"] is not None
    assert report["comparisons"][0]["simulated"] is True


def test_a_report_from_real_calibrated_facts_has_no_note() -> None:
    report = report_json(summaries=summarize([shot("real"), shot("real")], []))

    assert report["simulated"] is False
    assert report["note"] is None


def test_only_uncalibrated_clip_gives_only_the_clip_note() -> None:
    report = report_json(summaries=summarize([shot("real", clip_calibrated=False)], []))

    assert report["simulated"] is False
    assert report["note"] == UNCALIBRATED_NOTE


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.123456789, 0.123457), (1.23456789e-12, 1.23457e-12), (1234.56789, 1234.5679), (0.0, 0.0), (float("nan"), None)],
)
def test_floats_are_rounded_without_losing_small_p_values(value: float, expected: float | None) -> None:
    assert rounded(value) == expected


def test_summary_csv_has_a_stable_header_and_one_line_per_group() -> None:
    shots, identities = simulated_facts()
    summaries = summarize(shots, identities, by=("provider", "scenario"))

    text = report_csv(summaries)

    lines = text.splitlines()
    assert lines[0] == SUMMARY_HEADER
    assert len(lines) == 1 + len(summaries)
    rows = list(csv.DictReader(io.StringIO(text)))
    sim = next(row for row in rows if row["provider"] == "sim")
    assert sim["simulated"] == "true"
    assert SIMULATED_NOTE in sim["note"]
    assert UNCALIBRATED_NOTE in sim["note"]
    assert sim["scenario"] == "portrait"
    assert sim["strategy"] == "", "None is an empty cell"
    assert sim["identity_n"] == "4"
    assert float(sim["latency_p50_ms"]) == pytest.approx(1150.0)


def test_an_empty_list_needs_its_kind_and_mixed_kinds_are_refused() -> None:
    assert report_csv([], kind=GroupSummary) == SUMMARY_HEADER + "\n"
    assert report_csv([], kind=ScorecardRow) == SCORECARD_HEADER + "\n"
    with pytest.raises(ValueError, match="one kind"):
        report_csv([])
    shots, identities = simulated_facts()
    summaries = summarize(shots, identities)
    with pytest.raises(ValueError, match="one kind"):
        report_csv([*summaries, *score_providers(summaries)])


def test_scorecard_and_comparison_csv() -> None:
    shots, identities = simulated_facts()
    summaries = summarize(shots, identities)

    scorecard = report_csv(score_providers(summaries))
    comparisons = report_csv(compare_providers(shots))

    assert scorecard.splitlines()[0] == SCORECARD_HEADER
    sim = next(row for row in csv.DictReader(io.StringIO(scorecard)) if row["provider"] == "sim")
    assert sim["integration_effort_basis"] == "judged"
    assert sim["consistency_basis"] == "measured"
    assert sim["simulated"] == "true"
    header = comparisons.splitlines()[0].split(",")
    assert header[:3] == ["metric", "provider_a", "provider_b"]
    assert header[-1] == "note"
    (row,) = csv.DictReader(io.StringIO(comparisons))
    assert SIMULATED_NOTE in row["note"]
    assert "more consistent than" in row["conclusion"] or "no significant difference" in row["conclusion"]
