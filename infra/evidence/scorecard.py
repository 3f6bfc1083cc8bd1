"""The research's weighted scorecard, from measured figures where there are any.

Each criterion is scored 0-100 (higher is better):

- consistency: pass rate x 100 (share of scored shots judged "same"); missing without scored shots.
- training_time: 100 x clamp(1 - mean training seconds / `training_s_worst`); a provider whose only strategy is
  instant reference and that reports no training time trains nothing and scores 100 ("by_design").
- inference_latency: 100 x clamp(1 - p50 latency / `latency_ms_worst`).
- cost: 100 x clamp(1 - mean cost per shot / `cost_per_shot_worst`).
- integration_effort, browser_compatibility: judged, from a table (`DEFAULT_QUALITATIVE`), not measured.

clamp keeps a score within [0, 1] before scaling. The total is the weighted sum over the criteria that have a
score; a criterion without one is left out, the remaining weights are renormalised to sum to 1, and the row
names what was missing. Tier 1 at a total of 70 or more, tier 2 at 50 or more, else tier 3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from infra.evidence.summary import GroupSummary

TIER_1_AT = 70.0
TIER_2_AT = 50.0


@dataclass(frozen=True)
class ScorecardWeights:
    consistency: float = 0.30
    training_time: float = 0.15
    inference_latency: float = 0.20
    cost: float = 0.15
    integration_effort: float = 0.10
    browser_compatibility: float = 0.10

    def __post_init__(self) -> None:
        values = [getattr(self, field.name) for field in fields(self)]
        if any(not math.isfinite(value) or value < 0 for value in values):
            raise ValueError(f"scorecard weights must be finite and >= 0, got {values}")
        total = math.fsum(values)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"scorecard weights must sum to 1, but they sum to {total!r}")

    def as_dict(self) -> dict[str, float]:
        return {field.name: float(getattr(self, field.name)) for field in fields(self)}


@dataclass(frozen=True)
class ScorecardAnchors:
    """The figure that scores 0 on each measured criterion; 0 (no time, no cost) scores 100."""

    training_s_worst: float = 3600.0
    latency_ms_worst: float = 60_000.0
    cost_per_shot_worst: float = 0.20  # USD

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{field.name} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class QualitativeScores:
    """Judgements (0-100), not measurements: how little work the provider is to integrate and run, and whether
    an app can call it from an ordinary browser-facing backend without hosting GPUs."""

    integration_effort: float
    browser_compatibility: float

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not 0 <= value <= 100:
                raise ValueError(f"{field.name} must be within 0..100, not {value!r}")


# A judgement by the author of this module from the adapters' code and the providers' documentation (README,
# "Providers"), not a measurement; replace it with your own table. Every provider is a server-side API, so
# browser_compatibility reads "can a browser-facing backend call it without hosting GPUs": hosted APIs score
# high, self-hosted ComfyUI (you run the GPU server, custom nodes and model files) scores low.
# integration_effort: higher = less work. Hosted instant-reference calls need one key and no training step;
# trained providers add a training lifecycle (zips, polling or webhooks, weights copies); Replicate needs a
# destination model and a pinned trainer; Astria's prices are a stale snapshot and a tune has no failure
# state; Leonardo needs a two-step upload and prices in credits; ComfyUI needs GPUs, custom nodes and model
# files and has never met a real server. `sim` needs nothing but is not a real option.
DEFAULT_QUALITATIVE: dict[str, QualitativeScores] = {
    "sim": QualitativeScores(integration_effort=100, browser_compatibility=100),
    "fal-instant-character": QualitativeScores(integration_effort=85, browser_compatibility=90),
    "fal-flux-redux": QualitativeScores(integration_effort=85, browser_compatibility=90),
    "fal-flux-lora": QualitativeScores(integration_effort=70, browser_compatibility=90),
    "astria-tune": QualitativeScores(integration_effort=60, browser_compatibility=85),
    "replicate-flux-lora": QualitativeScores(integration_effort=55, browser_compatibility=85),
    "leonardo-character-reference": QualitativeScores(integration_effort=65, browser_compatibility=85),
    "comfyui-ipadapter": QualitativeScores(integration_effort=30, browser_compatibility=20),
    "comfyui-instantid": QualitativeScores(integration_effort=25, browser_compatibility=20),
    "comfyui-reference-only": QualitativeScores(integration_effort=25, browser_compatibility=20),
}


@dataclass(frozen=True)
class CriterionScore:
    name: str
    score: float | None  # 0-100; None when there is no figure
    weight: float  # as configured
    effective_weight: float  # after renormalising over the criteria with a score; 0 when missing
    basis: str  # "measured", "judged", "by_design" (no training step) or "missing"
    detail: str  # the figure behind the score, or why there is none


@dataclass(frozen=True)
class ScorecardRow:
    provider: str
    criteria: tuple[CriterionScore, ...]  # in the weights' field order
    total: float | None  # None when no criterion has a score
    tier: int | None
    missing: tuple[str, ...]
    simulated: bool
    clip_uncalibrated: bool

    def criterion(self, name: str) -> CriterionScore:
        for criterion in self.criteria:
            if criterion.name == name:
                return criterion
        raise KeyError(name)


def _down_from(figure: float, worst: float) -> float:
    return 100 * min(1.0, max(0.0, 1 - figure / worst))


def tier(total: float) -> int:
    """1 at 70 or more, 2 at 50 or more, else 3; the total is rounded to 9 decimals first, so a weighted sum
    that should be exactly 70 but lands at 69.99999999999999 in floating point is tier 1."""
    total = round(total, 9)
    return 1 if total >= TIER_1_AT else 2 if total >= TIER_2_AT else 3


def _measured(summary: GroupSummary, anchors: ScorecardAnchors) -> dict[str, tuple[float | None, str, str]]:
    consistency: tuple[float | None, str, str] = (None, "missing", "no scored shots")
    if summary.pass_rate is not None:
        consistency = (
            100 * summary.pass_rate,
            "measured",
            f"pass rate {summary.passed}/{summary.shots_scored}",
        )
    training: tuple[float | None, str, str] = (None, "missing", "no ready identity with a training time")
    if summary.training_mean_s is not None:
        training = (
            _down_from(summary.training_mean_s, anchors.training_s_worst),
            "measured",
            f"mean training {summary.training_mean_s:.1f} s over {summary.training_n} identities",
        )
    elif summary.strategies == ("instant_reference",):
        training = (100.0, "by_design", "instant reference: nothing to train")
    latency: tuple[float | None, str, str] = (None, "missing", "no shot with a latency")
    if summary.latency_p50_ms is not None:
        latency = (
            _down_from(summary.latency_p50_ms, anchors.latency_ms_worst),
            "measured",
            f"p50 latency {summary.latency_p50_ms:.0f} ms over {summary.latency_n} shots",
        )
    cost: tuple[float | None, str, str] = (None, "missing", "no shot with a cost")
    if summary.cost_per_shot_usd is not None:
        cost = (
            _down_from(summary.cost_per_shot_usd, anchors.cost_per_shot_worst),
            "measured",
            f"mean cost per shot ${summary.cost_per_shot_usd:.4f}",
        )
    return {"consistency": consistency, "training_time": training, "inference_latency": latency, "cost": cost}


def score_providers(
    summaries: Iterable[GroupSummary],
    *,
    weights: ScorecardWeights | None = None,
    anchors: ScorecardAnchors | None = None,
    qualitative: Mapping[str, QualitativeScores] | None = None,
) -> list[ScorecardRow]:
    """One row per provider, from summaries grouped by provider alone (`summarize(..., by=("provider",))`)."""
    weights = weights or ScorecardWeights()
    anchors = anchors or ScorecardAnchors()
    table = DEFAULT_QUALITATIVE if qualitative is None else qualitative
    rows = []
    for summary in summaries:
        if summary.scenario is not None or summary.strategy is not None:
            raise ValueError("the scorecard needs summaries grouped by provider alone (by=('provider',))")
        figures = _measured(summary, anchors)
        judged = table.get(summary.provider)
        for name in ("integration_effort", "browser_compatibility"):
            figures[name] = (
                (None, "missing", "not in the qualitative table")
                if judged is None
                else (float(getattr(judged, name)), "judged", "judgement, not a measurement")
            )
        configured = weights.as_dict()
        present = math.fsum(configured[name] for name, figure in figures.items() if figure[0] is not None)
        criteria = []
        for name, weight in configured.items():
            score, basis, detail = figures[name]
            effective = weight / present if score is not None and present > 0 else 0.0
            criteria.append(CriterionScore(name, score, weight, effective, basis, detail))
        scored = [criterion for criterion in criteria if criterion.score is not None]
        total = math.fsum(c.score * c.effective_weight for c in scored if c.score is not None) if present else None
        rows.append(
            ScorecardRow(
                provider=summary.provider,
                criteria=tuple(criteria),
                total=total,
                tier=None if total is None else tier(total),
                missing=tuple(criterion.name for criterion in criteria if criterion.score is None),
                simulated=summary.simulated,
                clip_uncalibrated=summary.clip_uncalibrated,
            )
        )
    return rows
