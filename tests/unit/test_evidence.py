"""infra.evidence: the facts and the per-group summaries, with figures worked out by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest

from infra.evidence.facts import IdentityFact, ShotFact
from infra.evidence.summary import GroupSummary, summarize

Z95 = 1.959963984540054
T95_DF2 = 4.302653  # Student t's 0.975 quantile, 2 degrees of freedom (tables)


def shot(provider: str = "alpha", **overrides: Any) -> ShotFact:
    """A scored shot judged "same"; override what the test is about."""
    fields: dict[str, Any] = {
        "character_id": "char-1",
        "provider": provider,
        "strategy": "instant_reference",
        "scenario": "portrait",
        "status": "scored",
        "verdict": "same",
        "face_distance": 0.4,
        "clip_image": 0.8,
        "clip_text": 0.3,
        "clip_calibrated": True,
        "latency_ms": 1000.0,
        "cost_usd": 0.1,
        "simulated": False,
    }
    fields.update(overrides)
    if fields["status"] != "scored" and "verdict" not in overrides:
        fields["verdict"] = None
    return ShotFact(**fields)


def identity(provider: str = "alpha", **overrides: Any) -> IdentityFact:
    fields: dict[str, Any] = {
        "character_id": "char-1",
        "provider": provider,
        "strategy": "instant_reference",
        "state": "ready",
        "training_seconds": 0.0,
        "cost_usd": 0.0,
        "simulated": False,
    }
    fields.update(overrides)
    return IdentityFact(**fields)


def hand_wilson(successes: int, trials: int) -> tuple[float, float]:
    p, n, z = successes / trials, trials, Z95
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


# --- facts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "dreambooth"}, "strategy must be one of"),
        ({"status": "done"}, "status must be one of"),
        ({"verdict": "maybe"}, "verdict must be one of"),
        ({"status": "failed", "verdict": "same"}, "verdict exactly when it is scored"),
        ({"verdict": None}, "verdict exactly when it is scored"),
        ({"cost_usd": -0.01}, "cost_usd must be >= 0"),
        ({"face_distance": float("nan")}, "face_distance must be a finite number"),
    ],
)
def test_a_malformed_shot_fact_is_refused_with_the_field_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shot(**overrides)


def test_a_malformed_identity_fact_is_refused() -> None:
    with pytest.raises(ValueError, match="state must be one of"):
        identity(state="training")
    with pytest.raises(ValueError, match="training_seconds must be >= 0"):
        identity(training_seconds=-1.0)


# --- summarize -----------------------------------------------------------------------------------


def alpha_shots() -> list[ShotFact]:
    return [
        shot(face_distance=0.3, clip_image=0.8, clip_text=0.25, latency_ms=1000.0),
        shot(face_distance=0.4, clip_image=0.9, clip_text=0.35, latency_ms=2000.0),
        shot(verdict="different", face_distance=0.7, clip_image=0.7, clip_text=0.30, latency_ms=4000.0),
        shot(verdict="no_face", face_distance=None, clip_image=0.6, clip_text=None, latency_ms=3000.0),
        shot(status="failed", face_distance=None, clip_image=None, clip_text=None, latency_ms=None, cost_usd=None),
        shot(status="requested", face_distance=None, clip_image=None, clip_text=None, latency_ms=None, cost_usd=None),
    ]


def only(summaries: list[GroupSummary], **key: str) -> GroupSummary:
    matches = [s for s in summaries if all(getattr(s, name) == value for name, value in key.items())]
    assert len(matches) == 1, f"expected one group for {key}, got {len(matches)}"
    return matches[0]


def test_provider_summary_worked_by_hand() -> None:
    identities = [identity(), identity(state="failed", training_seconds=None, cost_usd=None)]

    (alpha,) = summarize(alpha_shots(), identities)

    assert (alpha.provider, alpha.scenario, alpha.strategy) == ("alpha", None, None)
    assert (alpha.shots_requested, alpha.shots_scored, alpha.shots_failed, alpha.shots_pending) == (6, 4, 1, 1)
    # face distances 0.3, 0.4, 0.7 (the no-face shot counts toward the pass rate only)
    assert alpha.identity.n == 3
    assert alpha.identity.mean == pytest.approx(1.4 / 3)
    std = math.sqrt(((0.3 - 1.4 / 3) ** 2 + (0.4 - 1.4 / 3) ** 2 + (0.7 - 1.4 / 3) ** 2) / 2)
    assert alpha.identity.std == pytest.approx(std)  # 0.208167
    half = T95_DF2 * std / math.sqrt(3)
    assert alpha.identity.ci95_low == pytest.approx(1.4 / 3 - half, abs=1e-6)
    assert alpha.identity.ci95_high == pytest.approx(1.4 / 3 + half, abs=1e-6)
    # 2 of 4 scored shots "same"
    assert (alpha.passed, alpha.pass_rate) == (2, 0.5)
    assert (alpha.pass_ci95_low, alpha.pass_ci95_high) == pytest.approx(hand_wilson(2, 4))
    assert alpha.clip_image.n == 4
    assert alpha.clip_image.mean == pytest.approx(0.75)
    assert alpha.clip_text.mean == pytest.approx(0.30)
    assert alpha.clip_uncalibrated is False
    # latencies 1000, 2000, 3000, 4000: p50 halfway between 2000 and 3000; p95 at position 3 x 0.95 = 2.85
    assert alpha.latency_n == 4
    assert alpha.latency_p50_ms == pytest.approx(2500.0)
    assert alpha.latency_p95_ms == pytest.approx(3850.0)
    assert alpha.cost_per_shot_usd == pytest.approx(0.1)
    assert alpha.shot_cost_total_usd == pytest.approx(0.4)
    assert (alpha.identities, alpha.identities_ready, alpha.identities_failed) == (2, 1, 1)
    assert (alpha.training_n, alpha.training_mean_s) == (1, 0.0)
    assert alpha.cost_per_identity_usd == 0.0
    assert alpha.failures == 2, "one failed shot and one failed identity"
    assert alpha.strategies == ("instant_reference",)
    assert alpha.simulated is False


def test_below_two_values_there_is_no_spread_and_without_scored_shots_no_pass_rate() -> None:
    (one,) = summarize([shot(face_distance=0.5)], [])
    (none,) = summarize([shot(status="failed", face_distance=None)], [])

    assert (one.identity.n, one.identity.mean, one.identity.std, one.identity.ci95_low) == (1, 0.5, None, None)
    assert none.shots_scored == 0
    assert (none.pass_rate, none.pass_ci95_low, none.pass_ci95_high) == (None, None, None)
    assert none.identity.mean is None


def test_training_time_is_the_mean_over_ready_identities_only() -> None:
    identities = [
        identity("beta", strategy="lora", training_seconds=600.0, cost_usd=2.0),
        identity("beta", strategy="lora", training_seconds=1200.0, cost_usd=2.5),
        identity("beta", strategy="lora", state="pending", training_seconds=None, cost_usd=None),
        identity("beta", strategy="lora", state="failed", training_seconds=50.0, cost_usd=1.0),
    ]

    (beta,) = summarize([shot("beta", strategy="lora")], identities)

    assert (beta.training_n, beta.training_mean_s) == (2, 900.0)
    assert beta.cost_per_identity_usd == pytest.approx((2.0 + 2.5 + 1.0) / 3), "every identity with a cost"
    assert beta.failures == 1


def test_scenario_rows_repeat_their_providers_identity_figures() -> None:
    shots = [
        shot("beta", strategy="lora", scenario="action"),
        shot("beta", strategy="lora", scenario="portrait"),
        shot("beta", strategy="lora", scenario="portrait", status="failed", face_distance=None),
    ]
    identities = [
        identity("beta", strategy="lora", training_seconds=600.0, cost_usd=2.0),
        identity("beta", strategy="lora", state="failed", training_seconds=None, cost_usd=None),
        identity("gamma", strategy="fine_tune", state="failed", training_seconds=None, cost_usd=None),
    ]

    rows = summarize(shots, identities, by=("provider", "scenario"))

    assert [(row.provider, row.scenario) for row in rows] == [("beta", "action"), ("beta", "portrait")]
    action, portrait = rows
    assert action.training_mean_s == portrait.training_mean_s == 600.0
    assert action.cost_per_identity_usd == portrait.cost_per_identity_usd == 2.0
    assert (action.failures, portrait.failures) == (1, 2), "the failed identity repeats; the failed shot does not"
    by_provider = summarize(shots, identities)
    assert [row.provider for row in by_provider] == ["beta", "gamma"], "identity-only providers still show"
    assert only(by_provider, provider="gamma").failures == 1


def test_strategy_rows_split_a_provider_and_its_identities() -> None:
    shots = [shot("omni", strategy="lora"), shot("omni", strategy="instant_reference", cost_usd=0.3)]
    identities = [
        identity("omni", strategy="lora", training_seconds=100.0, cost_usd=1.0),
        identity("omni", strategy="instant_reference", training_seconds=0.0, cost_usd=0.0),
    ]

    rows = summarize(shots, identities, by=("provider", "strategy"))

    lora = only(rows, strategy="lora")
    instant = only(rows, strategy="instant_reference")
    assert (lora.training_mean_s, lora.cost_per_identity_usd, lora.cost_per_shot_usd) == (100.0, 1.0, 0.1)
    assert (instant.training_mean_s, instant.cost_per_shot_usd) == (0.0, 0.3)
    (mixed,) = summarize(shots, identities)
    assert mixed.strategies == ("instant_reference", "lora")


def test_simulated_and_uncalibrated_flags_follow_any_fact_in_the_group() -> None:
    rows = summarize(
        [shot("real"), shot("fake"), shot("clip", clip_calibrated=False)],
        [identity("fake", simulated=True)],
    )

    assert only(rows, provider="fake").simulated is True
    assert only(rows, provider="real").simulated is False
    assert only(rows, provider="clip").clip_uncalibrated is True
    assert only(rows, provider="real").clip_uncalibrated is False


def test_an_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError, match="group by one of"):
        summarize([shot()], [], by=("scenario",))
