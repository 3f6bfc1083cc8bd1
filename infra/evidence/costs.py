"""What a month of shots would cost with each provider, and where trained and reference-based providers cross.

From measured figures only: a summary's mean cost per shot and mean cost per identity. Assumption: each
character's identity is built once in the month (one training or upload per character), so

    monthly cost = volume x cost_per_shot + characters x cost_per_identity.

A provider missing either figure is skipped with the reason, never filled in from a price list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

from infra.evidence.summary import GroupSummary

DEFAULT_VOLUMES = (1_000, 10_000, 100_000)


@dataclass(frozen=True)
class Projection:
    provider: str
    strategy: str | None  # set when the summaries were grouped by strategy
    characters: int
    shots_per_month: int
    cost_per_shot_usd: float | None
    cost_per_identity_usd: float | None
    monthly_cost_usd: float | None  # None when skipped
    skipped: str | None  # why there is no figure
    simulated: bool


@dataclass(frozen=True)
class BreakEven:
    """Per-character cost with n shots: identity + n x per-shot. The two lines cross at `shots_per_character`."""

    provider_a: str
    provider_b: str
    strategy_a: str | None
    strategy_b: str | None
    shots_per_character: float | None  # where the costs are equal; None when they never are (or skipped)
    cheaper_below: str | None  # the cheaper provider for fewer shots than the crossing (or always)
    cheaper_above: str | None  # the cheaper provider for more shots than the crossing (or always)
    statement: str
    skipped: str | None
    simulated: bool


def _check_grouping(summaries: Sequence[GroupSummary]) -> None:
    if any(summary.scenario is not None for summary in summaries):
        raise ValueError("cost figures need summaries grouped by provider (or provider and strategy), not scenario")


def _figures(summary: GroupSummary) -> tuple[float, float] | str:
    """(cost per shot, cost per identity), or why they are not both measured."""
    shot, identity = summary.cost_per_shot_usd, summary.cost_per_identity_usd
    if shot is not None and identity is not None:
        return shot, identity
    absent = [label for label, value in (("cost per shot", shot), ("cost per identity", identity)) if value is None]
    return f"no measured {' or '.join(absent)}"


def project_costs(
    summaries: Iterable[GroupSummary], *, characters: int, volumes: Sequence[int] = DEFAULT_VOLUMES
) -> list[Projection]:
    """One projection per summary and monthly shot volume."""
    summaries = list(summaries)
    _check_grouping(summaries)
    if characters < 0 or any(volume < 0 for volume in volumes):
        raise ValueError(f"characters and volumes must be >= 0, got {characters} and {list(volumes)}")
    projections = []
    for summary in summaries:
        figures = _figures(summary)
        for volume in volumes:
            monthly = None if isinstance(figures, str) else volume * figures[0] + characters * figures[1]
            projections.append(
                Projection(
                    provider=summary.provider,
                    strategy=summary.strategy,
                    characters=characters,
                    shots_per_month=volume,
                    cost_per_shot_usd=summary.cost_per_shot_usd,
                    cost_per_identity_usd=summary.cost_per_identity_usd,
                    monthly_cost_usd=monthly,
                    skipped=figures if isinstance(figures, str) else None,
                    simulated=summary.simulated,
                )
            )
    return projections


def _strategy(summary: GroupSummary) -> str | None:
    return summary.strategy or (summary.strategies[0] if len(summary.strategies) == 1 else None)


def _crossing(
    name_a: str, figures_a: tuple[float, float], name_b: str, figures_b: tuple[float, float]
) -> tuple[float | None, str | None, str | None, str]:
    identity_gap = figures_b[1] - figures_a[1]
    shot_gap = figures_a[0] - figures_b[0]
    if shot_gap == 0:
        if identity_gap == 0:
            return None, None, None, f"{name_a} and {name_b} cost the same per character at any number of shots"
        cheaper = name_a if identity_gap > 0 else name_b
        return None, cheaper, cheaper, f"{cheaper} is always cheaper: same cost per shot, cheaper identity"
    crossing = identity_gap / shot_gap
    cheaper_per_shot = name_b if shot_gap > 0 else name_a
    other = name_a if cheaper_per_shot == name_b else name_b
    if crossing <= 0:
        return (
            None,
            cheaper_per_shot,
            cheaper_per_shot,
            f"{cheaper_per_shot} is always cheaper: its identity and its shots cost no more than {other}'s",
        )
    return (
        crossing,
        other,
        cheaper_per_shot,
        f"{other} is cheaper below {crossing:.1f} shots per character, {cheaper_per_shot} above",
    )


def break_even(summaries: Iterable[GroupSummary]) -> list[BreakEven]:
    """For every pair of summaries whose strategies differ, the shots per character at which their
    per-character costs (identity + n x per-shot) are equal, or which one is always cheaper."""
    summaries = sorted(summaries, key=lambda summary: (summary.provider, summary.strategy or ""))
    _check_grouping(summaries)
    results = []
    for a, b in combinations(summaries, 2):
        strategy_a, strategy_b = _strategy(a), _strategy(b)
        if strategy_a is not None and strategy_a == strategy_b:
            continue
        crossing, below, above, statement = None, None, None, ""
        skipped = None
        if strategy_a is None or strategy_b is None:
            mixed = a.provider if strategy_a is None else b.provider
            skipped = f"{mixed} has shots with several strategies; summarise by provider and strategy"
        elif isinstance(figures_a := _figures(a), str):
            skipped = f"{a.provider}: {figures_a}"
        elif isinstance(figures_b := _figures(b), str):
            skipped = f"{b.provider}: {figures_b}"
        else:
            crossing, below, above, statement = _crossing(a.provider, figures_a, b.provider, figures_b)
        results.append(
            BreakEven(
                provider_a=a.provider,
                provider_b=b.provider,
                strategy_a=strategy_a,
                strategy_b=strategy_b,
                shots_per_character=crossing,
                cheaper_below=below,
                cheaper_above=above,
                statement=statement or f"skipped: {skipped}",
                skipped=skipped,
                simulated=a.simulated or b.simulated,
            )
        )
    return results
