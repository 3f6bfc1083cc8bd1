"""The reports as JSON-ready dicts and as CSV text. Pure: builds strings and dicts, writes nothing.

Every output says where its figures came from: `simulated` is true when any fact behind it came from the
offline simulator or a fake provider, and `note` then says so; CLIP figures from random weights add a second
note. Floats are rounded: 4 decimals at magnitude 1 or more, else 6 significant digits (so a p-value of 1e-12
stays 1e-12, not 0). None stays None (an empty cell in CSV). Non-finite floats become None.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from typing import Any

from infra.evidence.costs import BreakEven, Projection
from infra.evidence.scorecard import ScorecardRow
from infra.evidence.stats import Comparison
from infra.evidence.summary import GroupSummary

SIMULATED_NOTE = "figures from the offline simulator / fake providers, not from real providers"
UNCALIBRATED_NOTE = "CLIP on random weights: uncalibrated"

Row = GroupSummary | Comparison | ScorecardRow | Projection | BreakEven


def rounded(value: float) -> float | None:
    if not math.isfinite(value):
        return None
    if value == 0 or abs(value) >= 1:
        return round(value, 4)
    return float(f"{value:.6g}")


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return rounded(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    raise TypeError(f"cannot render {type(value).__name__}")


def _flags(row: Row) -> tuple[bool, bool]:
    uncalibrated = row.clip_uncalibrated if isinstance(row, GroupSummary | Comparison | ScorecardRow) else False
    return row.simulated, uncalibrated


def note(simulated: bool, clip_uncalibrated: bool) -> str | None:
    """The sentence an output carries about its provenance, or None when its figures are real and calibrated."""
    notes = [SIMULATED_NOTE] * simulated + [UNCALIBRATED_NOTE] * clip_uncalibrated
    return "; ".join(notes) or None


def _row_dict(row: Row) -> dict[str, Any]:
    result: dict[str, Any] = _plain(row)
    result["note"] = note(*_flags(row))
    return result


def report_json(
    *,
    summaries: Sequence[GroupSummary] = (),
    comparisons: Sequence[Comparison] = (),
    scorecard: Sequence[ScorecardRow] = (),
    projections: Sequence[Projection] = (),
    break_evens: Sequence[BreakEven] = (),
) -> dict[str, Any]:
    """Everything in one JSON-serialisable dict; each row carries its own `note`, and the top level carries
    `simulated`, `clip_uncalibrated` and `note` for the whole report."""
    rows: list[Row] = [*summaries, *comparisons, *scorecard, *projections, *break_evens]
    simulated = any(_flags(row)[0] for row in rows)
    uncalibrated = any(_flags(row)[1] for row in rows)
    return {
        "simulated": simulated,
        "clip_uncalibrated": uncalibrated,
        "note": note(simulated, uncalibrated),
        "summaries": [_row_dict(row) for row in summaries],
        "comparisons": [_row_dict(row) for row in comparisons],
        "scorecard": [_row_dict(row) for row in scorecard],
        "projections": [_row_dict(row) for row in projections],
        "break_evens": [_row_dict(row) for row in break_evens],
    }


def _spread_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{name}" for name in ("n", "mean", "std", "ci95_low", "ci95_high")]


SUMMARY_COLUMNS: tuple[str, ...] = (
    "provider", "scenario", "strategy", "strategies",
    "shots_requested", "shots_scored", "shots_failed", "shots_pending",
    *_spread_columns("identity"),
    "passed", "pass_rate", "pass_ci95_low", "pass_ci95_high",
    *_spread_columns("clip_image"), *_spread_columns("clip_text"), "clip_uncalibrated",
    "latency_n", "latency_p50_ms", "latency_p95_ms",
    "identities", "identities_ready", "identities_failed", "training_n", "training_mean_s",
    "cost_per_shot_usd", "shot_cost_total_usd", "cost_per_identity_usd",
    "failures", "simulated", "takes_regenerated", "takes_fallback", "rescued_by_fallback", "note",
)  # fmt: skip
COMPARISON_COLUMNS: tuple[str, ...] = (*(field.name for field in dataclasses.fields(Comparison)), "note")
CRITERIA = ("consistency", "training_time", "inference_latency", "cost", "integration_effort", "browser_compatibility")
SCORECARD_COLUMNS: tuple[str, ...] = (
    "provider",
    "total",
    "tier",
    "missing",
    *(f"{name}_{part}" for name in CRITERIA for part in ("score", "basis", "weight")),
    "simulated",
    "clip_uncalibrated",
    "note",
)
PROJECTION_COLUMNS: tuple[str, ...] = (*(field.name for field in dataclasses.fields(Projection)), "note")
BREAK_EVEN_COLUMNS: tuple[str, ...] = (*(field.name for field in dataclasses.fields(BreakEven)), "note")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    return value


def _flat(row: Row) -> dict[str, Any]:
    plain = _row_dict(row)
    flat: dict[str, Any] = {}
    for key, value in plain.items():
        if isinstance(value, dict):  # a Spread
            flat.update({f"{key}_{inner}": item for inner, item in value.items()})
        elif key == "criteria":
            for criterion in value:
                name = criterion["name"]
                flat.update(
                    {
                        f"{name}_score": criterion["score"],
                        f"{name}_basis": criterion["basis"],
                        f"{name}_weight": criterion["effective_weight"],
                    }
                )
        else:
            flat[key] = value
    return flat


def _csv(rows: Sequence[Row], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        flat = _flat(row)
        writer.writerow([_cell(flat.get(column)) for column in columns])
    return buffer.getvalue()


_COLUMNS: dict[type, tuple[str, ...]] = {
    GroupSummary: SUMMARY_COLUMNS,
    Comparison: COMPARISON_COLUMNS,
    ScorecardRow: SCORECARD_COLUMNS,
    Projection: PROJECTION_COLUMNS,
    BreakEven: BREAK_EVEN_COLUMNS,
}


def report_csv(rows: Sequence[Row], kind: type | None = None) -> str:
    """One header line, then one line per row, columns in a fixed order (`SUMMARY_COLUMNS`,
    `COMPARISON_COLUMNS`, `SCORECARD_COLUMNS`, `PROJECTION_COLUMNS`, `BREAK_EVEN_COLUMNS`). The kind of row is
    taken from the rows; pass `kind` (e.g. `GroupSummary`) to get the header for an empty list."""
    kinds = {type(row) for row in rows} | ({kind} if kind is not None else set())
    if len(kinds) != 1:
        raise ValueError(
            "report_csv needs rows of one kind, or kind= for an empty list; got "
            + (", ".join(sorted(k.__name__ for k in kinds)) or "none")
        )
    (row_kind,) = kinds
    if row_kind not in _COLUMNS:
        raise ValueError(f"no CSV layout for {row_kind.__name__}")
    return _csv(rows, _COLUMNS[row_kind])
