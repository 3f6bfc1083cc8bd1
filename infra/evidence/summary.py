"""Per-group figures for the provider reports: consistency, CLIP, latency, training time, cost, failures.

Groups are by provider, by provider and scenario, or by provider and strategy. Identities have no scenario:
grouped by provider and scenario, every scenario row repeats its provider's identity figures (training time,
cost per identity, failed identities). A scenario grouping lists only (provider, scenario) pairs that have
shots; the provider grouping is where a provider with identities but no shots shows up.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from infra.evidence.facts import IdentityFact, ShotFact
from infra.evidence.stats import Spread, percentile, spread, wilson_interval

GROUPINGS = (("provider",), ("provider", "scenario"), ("provider", "strategy"))


@dataclass(frozen=True)
class GroupSummary:
    provider: str
    scenario: str | None  # set only when grouped by scenario
    strategy: str | None  # set only when grouped by strategy
    strategies: tuple[str, ...]  # every strategy seen in the group's shots and identities, sorted
    shots_requested: int  # every shot in the group, whatever its status
    shots_scored: int
    shots_failed: int
    shots_pending: int  # requested or stored, not yet scored or failed
    identity: Spread  # face distance of scored shots with a face: lower = more alike
    passed: int  # scored shots judged "same"
    pass_rate: float | None  # passed / shots_scored; None when nothing is scored
    pass_ci95_low: float | None  # Wilson 95% interval
    pass_ci95_high: float | None
    clip_image: Spread
    clip_text: Spread
    clip_uncalibrated: bool  # some CLIP figure came from random weights
    latency_n: int
    latency_p50_ms: float | None  # linear interpolation between closest ranks (numpy's default)
    latency_p95_ms: float | None
    identities: int
    identities_ready: int
    identities_failed: int
    training_n: int  # ready identities with a training time
    training_mean_s: float | None
    cost_per_shot_usd: float | None  # mean over shots with a cost
    shot_cost_total_usd: float  # sum over shots with a cost
    cost_per_identity_usd: float | None  # mean over identities with a cost
    failures: int  # shots_failed + identities_failed
    simulated: bool  # some fact in the group came from the simulator or a fake provider
    # The consistency gate: every take is one of the group's shots (above); these say which were retakes.
    takes_regenerated: int = 0  # takes made again with this provider and a new seed
    takes_fallback: int = 0  # takes this provider made as another provider's fallback
    rescued_by_fallback: int = 0  # of those, the ones judged "same"


@dataclass(frozen=True)
class GateSummary:
    """What the consistency gate did over a set of shots (each shot counted once, by its takes)."""

    shots: int  # distinct shots
    takes: int  # every take, first takes included
    shots_regenerated: int  # shots with at least one retake (regenerated or fallback)
    takes_regenerated: int
    takes_fallback: int
    rescued_by_fallback: int  # shots whose final take is a fallback take judged "same"
    rescued_by_regeneration: int  # shots whose final take is a regeneration judged "same"


def _key(fact: ShotFact | IdentityFact, by: tuple[str, ...]) -> tuple[str, str | None, str | None]:
    scenario = fact.scenario if "scenario" in by and isinstance(fact, ShotFact) else None
    return fact.provider, scenario, fact.strategy if "strategy" in by else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _summarise_group(
    key: tuple[str, str | None, str | None], shots: list[ShotFact], identities: list[IdentityFact]
) -> GroupSummary:
    scored = [shot for shot in shots if shot.status == "scored"]
    failed = sum(shot.status == "failed" for shot in shots)
    passed = sum(shot.verdict == "same" for shot in scored)
    low, high = wilson_interval(passed, len(scored)) if scored else (None, None)
    clip_image = [shot.clip_image for shot in scored if shot.clip_image is not None]
    clip_text = [shot.clip_text for shot in scored if shot.clip_text is not None]
    uncalibrated = any(
        not shot.clip_calibrated and (shot.clip_image is not None or shot.clip_text is not None) for shot in scored
    )
    latencies = [shot.latency_ms for shot in shots if shot.latency_ms is not None]
    shot_costs = [shot.cost_usd for shot in shots if shot.cost_usd is not None]
    ready = [identity for identity in identities if identity.state == "ready"]
    training = [identity.training_seconds for identity in ready if identity.training_seconds is not None]
    identity_costs = [identity.cost_usd for identity in identities if identity.cost_usd is not None]
    identities_failed = sum(identity.state == "failed" for identity in identities)
    facts: list[ShotFact | IdentityFact] = [*shots, *identities]
    return GroupSummary(
        provider=key[0],
        scenario=key[1],
        strategy=key[2],
        strategies=tuple(sorted({fact.strategy for fact in facts})),
        shots_requested=len(shots),
        shots_scored=len(scored),
        shots_failed=failed,
        shots_pending=len(shots) - len(scored) - failed,
        identity=spread([shot.face_distance for shot in scored if shot.face_distance is not None]),
        passed=passed,
        pass_rate=passed / len(scored) if scored else None,
        pass_ci95_low=low,
        pass_ci95_high=high,
        clip_image=spread(clip_image),
        clip_text=spread(clip_text),
        clip_uncalibrated=uncalibrated,
        latency_n=len(latencies),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        identities=len(identities),
        identities_ready=len(ready),
        identities_failed=identities_failed,
        training_n=len(training),
        training_mean_s=_mean(training),
        cost_per_shot_usd=_mean(shot_costs),
        shot_cost_total_usd=float(sum(shot_costs)),
        cost_per_identity_usd=_mean(identity_costs),
        failures=failed + identities_failed,
        simulated=any(fact.simulated for fact in facts),
        takes_regenerated=sum(shot.take_reason == "regenerate" for shot in shots),
        takes_fallback=sum(shot.take_reason == "fallback" for shot in shots),
        rescued_by_fallback=sum(shot.take_reason == "fallback" and shot.verdict == "same" for shot in shots),
    )


def gate_summary(takes: Iterable[ShotFact]) -> GateSummary:
    """Shots counted once each (by `shot_id`), takes counted all; a rescue is a shot whose final take is a retake
    judged "same"."""
    facts = list(takes)
    retaken = {fact.shot_id for fact in facts if fact.take > 1}
    finals = [fact for fact in facts if fact.final and fact.take > 1 and fact.verdict == "same"]
    return GateSummary(
        shots=len({fact.shot_id for fact in facts}),
        takes=len(facts),
        shots_regenerated=len(retaken),
        takes_regenerated=sum(fact.take_reason == "regenerate" for fact in facts),
        takes_fallback=sum(fact.take_reason == "fallback" for fact in facts),
        rescued_by_fallback=sum(fact.take_reason == "fallback" for fact in finals),
        rescued_by_regeneration=sum(fact.take_reason == "regenerate" for fact in finals),
    )


def summarize(
    shots: Iterable[ShotFact], identities: Iterable[IdentityFact], by: tuple[str, ...] = ("provider",)
) -> list[GroupSummary]:
    """One summary per group, sorted by provider, then scenario or strategy."""
    if by not in GROUPINGS:
        raise ValueError(f"group by one of {', '.join(map(str, GROUPINGS))}, not {by!r}")
    shot_groups: dict[tuple[str, str | None, str | None], list[ShotFact]] = {}
    for shot in shots:
        shot_groups.setdefault(_key(shot, by), []).append(shot)
    identity_groups: dict[tuple[str, str | None, str | None], list[IdentityFact]] = {}
    for identity in identities:
        identity_groups.setdefault(_key(identity, by), []).append(identity)
    if "scenario" in by:
        keys = set(shot_groups)
        identities_of = {key: identity_groups.get((key[0], None, None), []) for key in keys}
    else:
        keys = set(shot_groups) | set(identity_groups)
        identities_of = {key: identity_groups.get(key, []) for key in keys}
    ordered = sorted(keys, key=lambda key: (key[0], key[1] or "", key[2] or ""))
    return [_summarise_group(key, shot_groups.get(key, []), identities_of[key]) for key in ordered]
