"""The demo's results: a terminal table, a CSV and a static HTML page, from the gateway's character JSON.

Input is the body of `GET /v1/characters/{id}` as a plain mapping; nothing here touches the network.
Fields may be missing while a character is still in flight, so every read is tolerant.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import jinja2
from rich.table import Table
from rich.text import Text

from services.scoring.statistics import ScoreStats, group_label, group_stats, lookup, shots_stats

SIMULATED_BANNER = "SIMULATED: images are transformed reference photos, not model output"
UNCALIBRATED_BANNER = "CLIP UNCALIBRATED: random weights, the CLIP similarity means nothing"
VERDICTS = ("same", "uncertain", "different", "no_face")
VERDICT_STYLES = {"same": "green", "uncertain": "yellow", "different": "red", "no_face": "red"}
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMPLATE = Path(__file__).with_name("templates") / "report.html"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
STATS_HEADERS = (
    "scenario",
    "shots scored",
    "mean face distance ± 95% CI",
    "std",
    'pass rate (judged "same")',
    "pass rate 95% CI",
)


@dataclass(frozen=True)
class ShotRow:
    index: int
    shot_id: str
    scenario: str | None
    provider: str
    latency_ms: float | None
    cost_usd: float | None
    face_distance: float | None
    faces_found: int | None
    clip_similarity: float | None
    prompt_similarity: float | None  # CLIP-T
    clip_calibrated: bool | None
    verdict: str
    scorer_key: str | None
    drifted: bool | None
    simulated: bool

    @property
    def gate(self) -> str | None:
        """For simulated shots, whether the verdict agrees with the simulator's ground truth."""
        if self.drifted is None or self.verdict not in VERDICTS:
            return None
        if self.verdict == "no_face":
            return "no face found"
        if self.drifted:
            return {"different": "caught", "uncertain": "flagged", "same": "MISSED"}[self.verdict]
        return {"same": "ok", "uncertain": "flagged", "different": "false alarm"}[self.verdict]


class Distribution(TypedDict):
    count: int
    mean: float | None
    min: float | None
    max: float | None


class Summary(TypedDict):
    shots: int
    scored: int
    failed: int
    pending: int
    verdicts: dict[str, int]
    face_distance: Distribution
    clip_similarity_mean: float | None
    shots_cost_usd: float
    identity_cost_usd: float
    total_cost_usd: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_mean_ms: float | None
    simulated: bool
    clip_uncalibrated: bool
    drifted: int
    drift_caught: int
    drift_missed: int
    face_distance_stats: ScoreStats  # the whole character
    scenario_stats: dict[str, ScoreStats]  # "" for shots without a scenario
    provider_stats: dict[str, ScoreStats]


def _shots(character: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [shot for shot in character.get("shots") or [] if isinstance(shot, Mapping)]


def _verdict(shot: Mapping[str, Any]) -> str:
    verdict = lookup(shot, "score", "verdict")
    if verdict is not None:
        return str(verdict)
    stage = lookup(shot, "failure", "stage")
    if stage is not None or shot.get("status") == "failed":
        return f"failed: {stage or 'unknown'}"
    return str(shot.get("status") or "unknown")


def _shot_row(index: int, shot: Mapping[str, Any]) -> ShotRow:
    simulation = shot.get("simulation")
    simulated = bool(lookup(simulation, "simulated"))
    clip_calibrated = lookup(shot, "score", "clip", "calibrated")
    return ShotRow(
        index=index,
        shot_id=str(shot.get("shot_id", "")),
        scenario=lookup(shot, "params", "scenario"),
        provider=str(shot.get("provider", "")),
        latency_ms=shot.get("latency_ms"),
        cost_usd=shot.get("cost_usd"),
        face_distance=lookup(shot, "score", "face", "distance"),
        faces_found=lookup(shot, "score", "face", "faces_found"),
        clip_similarity=lookup(shot, "score", "clip", "image_similarity"),
        prompt_similarity=lookup(shot, "score", "clip", "text_similarity"),
        clip_calibrated=None if clip_calibrated is None else bool(clip_calibrated),
        verdict=_verdict(shot),
        scorer_key=lookup(shot, "score", "scorer_key"),
        drifted=bool(lookup(simulation, "drifted")) if simulated else None,
        simulated=simulated,
    )


def shot_rows(character: Mapping[str, Any]) -> list[ShotRow]:
    return [_shot_row(index, shot) for index, shot in enumerate(_shots(character), start=1)]


def is_simulated(character: Mapping[str, Any]) -> bool:
    return bool(lookup(character, "identity", "simulated")) or any(row.simulated for row in shot_rows(character))


def clip_uncalibrated(character: Mapping[str, Any]) -> bool:
    return any(row.clip_calibrated is False for row in shot_rows(character))


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary(character: Mapping[str, Any]) -> Summary:
    rows = shot_rows(character)
    scored = [row for row in rows if row.verdict in VERDICTS]
    distances = [row.face_distance for row in scored if row.face_distance is not None]
    similarities = [row.clip_similarity for row in scored if row.clip_similarity is not None]
    latencies = [row.latency_ms for row in rows if row.latency_ms is not None]
    shots_cost = sum(row.cost_usd for row in rows if row.cost_usd is not None)
    identity_cost = float(lookup(character, "identity", "cost_usd") or 0.0)
    drifted = [row for row in scored if row.drifted]
    return Summary(
        shots=len(rows),
        scored=len(scored),
        failed=sum(row.verdict.startswith("failed") for row in rows),
        pending=sum(row.verdict not in VERDICTS and not row.verdict.startswith("failed") for row in rows),
        verdicts={verdict: sum(row.verdict == verdict for row in rows) for verdict in VERDICTS},
        face_distance=Distribution(
            count=len(distances),
            mean=_mean(distances),
            min=min(distances, default=None),
            max=max(distances, default=None),
        ),
        clip_similarity_mean=_mean(similarities),
        shots_cost_usd=shots_cost,
        identity_cost_usd=identity_cost,
        total_cost_usd=shots_cost + identity_cost,
        latency_p50_ms=_percentile(latencies, 0.50),
        latency_p95_ms=_percentile(latencies, 0.95),
        latency_mean_ms=_mean(latencies),
        simulated=is_simulated(character),
        clip_uncalibrated=clip_uncalibrated(character),
        drifted=sum(bool(row.drifted) for row in rows),
        drift_caught=sum(row.gate in {"caught", "flagged", "no face found"} for row in drifted),
        drift_missed=sum(row.gate == "MISSED" for row in drifted),
        face_distance_stats=shots_stats(_shots(character)),
        scenario_stats=group_stats(_shots(character), "scenario"),
        provider_stats=group_stats(_shots(character), "provider"),
    )


# --- formatting shared by the table and the page ---------------------------------------------------


def fmt_latency(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:,.0f} ms" if ms < 10_000 else f"{ms / 1000:,.1f} s"


def fmt_cost(usd: float | None) -> str:
    return "—" if usd is None else f"${usd:,.4f}"


def fmt_number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_face(row: ShotRow) -> str:
    if row.faces_found == 0 or row.verdict == "no_face":
        return "no face"
    if row.face_distance is None:
        return "—"
    extra = f" ({row.faces_found} faces)" if row.faces_found and row.faces_found > 1 else ""
    return f"{row.face_distance:.3f}{extra}"


def fmt_ground_truth(row: ShotRow) -> str:
    if row.drifted is None:
        return "—"
    truth = "sim: drifted" if row.drifted else "sim: clean"
    return f"{truth} ({row.gate})" if row.gate and row.gate != "ok" else truth


def summary_line(stats: Summary) -> str:
    counts = ", ".join(f"{verdict} {stats['verdicts'][verdict]}" for verdict in VERDICTS)
    parts = [f"{stats['shots']} shots", counts]
    if stats["failed"]:
        parts.append(f"failed {stats['failed']}")
    if stats["pending"]:
        parts.append(f"in flight {stats['pending']}")
    parts += [
        f"mean face distance {fmt_number(stats['face_distance']['mean'])}",
        f"total cost {fmt_cost(stats['total_cost_usd'])}",
        f"mean latency {fmt_latency(stats['latency_mean_ms'])}",
    ]
    if stats["drifted"]:
        parts.append(f"drift caught {stats['drift_caught']}/{stats['drifted']}")
    return " · ".join(parts)


# --- consistency statistics, shared by the table and the page --------------------------------------


@dataclass(frozen=True)
class StatsLine:
    kind: str  # "scenario", "provider" or "all"
    label: str
    shots: int  # every shot in the group, failed and in flight included
    stats: ScoreStats


def stats_lines(character: Mapping[str, Any]) -> list[StatsLine]:
    """One line per scenario, one per provider when there are several, then one for the whole character."""
    shots = _shots(character)
    stats = summary(character)
    lines = []
    for kind, groups in (("scenario", stats["scenario_stats"]), ("provider", stats["provider_stats"])):
        if kind == "provider" and len(groups) < 2:
            continue
        sizes = Counter(group_label(shot, kind) for shot in shots)
        for label, group in groups.items():
            shown = label or f"no {kind}"
            lines.append(StatsLine(kind, shown if kind == "scenario" else f"provider: {shown}", sizes[label], group))
    lines.append(StatsLine("all", "all shots", len(shots), stats["face_distance_stats"]))
    return lines


def stats_title(character: Mapping[str, Any]) -> str:
    several = len(summary(character)["provider_stats"]) > 1
    return "Consistency by scenario" + (" and provider" if several else "")


def stats_notes(character: Mapping[str, Any]) -> list[str]:
    notes = [
        "face distance (lower = more alike): ± is the 95% confidence interval of the mean (Student t), "
        "std the sample standard deviation; both need two or more faces",
        'pass rate: the share of scored shots judged "same", with its 95% Wilson score interval; '
        "few shots make wide intervals",
    ]
    thresholds = {lookup(shot, "score", "face", "same_below") for shot in _shots(character)}
    thresholds = {value for value in thresholds if isinstance(value, float | int) and not isinstance(value, bool)}
    if len(thresholds) == 1:
        notes.append(f'a face distance below {thresholds.pop():g} is judged "same"')
    notes.extend(scorer_notes(character))
    return notes


def scorer_notes(character: Mapping[str, Any]) -> list[str]:
    """Which scorer made the scores shown (each shot shows its newest score), and its calibration."""
    used: dict[str, str | None] = {}
    for shot in _shots(character):
        key = lookup(shot, "score", "scorer_key")
        if isinstance(key, str):
            used[key] = lookup(shot, "score", "calibration_profile")
    if not used:
        return []
    described = [
        f"{key} ({'calibration profile ' + str(profile) if profile else 'thresholds from settings'})"
        for key, profile in sorted(used.items())
    ]
    plural = "s" if len(used) > 1 else ""
    return [f"scores by scorer{plural} {', '.join(described)}; each shot shows its newest score"]


def fmt_mean_ci(stats: ScoreStats) -> str:
    if stats.mean is None:
        return "—"
    text = f"{stats.mean:.3f}"
    if stats.ci95_high is not None:
        text += f" ± {stats.ci95_high - stats.mean:.3f}"
    if stats.count < stats.scored:
        text += f" ({stats.count} faces)" if stats.count != 1 else " (1 face)"
    return text


def fmt_pass_rate(stats: ScoreStats) -> str:
    return "—" if stats.pass_rate is None else f"{stats.pass_rate:.0%} ({stats.passed}/{stats.scored})"


def fmt_pass_ci(stats: ScoreStats) -> str:
    if stats.pass_ci95_low is None or stats.pass_ci95_high is None:
        return "—"
    return f"{stats.pass_ci95_low:.0%} to {stats.pass_ci95_high:.0%}"


def stats_cells(line: StatsLine) -> tuple[str, str, str, str, str]:
    """The cells after the label, in STATS_HEADERS order."""
    stats = line.stats
    shots = str(stats.scored) if stats.scored == line.shots else f"{stats.scored} of {line.shots}"
    return shots, fmt_mean_ci(stats), fmt_number(stats.std), fmt_pass_rate(stats), fmt_pass_ci(stats)


# --- terminal ----------------------------------------------------------------------------------------


def _verdict_text(verdict: str) -> Text:
    style = VERDICT_STYLES.get(verdict, "bold red" if verdict.startswith("failed") else "dim")
    return Text(verdict, style=style)


def results_table(character: Mapping[str, Any]) -> Table:
    rows = shot_rows(character)
    stats = summary(character)
    caption = Text(summary_line(stats))
    if stats["simulated"]:
        caption.append("\n" + SIMULATED_BANNER, style="bold yellow")
    if stats["clip_uncalibrated"]:
        caption.append("\n" + UNCALIBRATED_BANNER, style="bold magenta")
    table = Table(
        # Text, not str: user strings such as "[bold]" must not be read as rich markup.
        title=Text(" · ".join(str(character.get(key) or "") for key in ("name", "strategy", "provider"))),
        caption=caption,
        caption_justify="left",
    )
    for header in ("shot", "scenario", "provider", "latency", "cost", "face identity"):
        table.add_column(header, justify="right" if header in {"latency", "cost"} else "left")
    table.add_column("CLIP-I (uncalibrated)" if stats["clip_uncalibrated"] else "CLIP-I", justify="right")
    table.add_column("CLIP-T", justify="right")
    table.add_column("verdict")
    if stats["simulated"]:
        table.add_column("ground truth")
    for row in rows:
        face = fmt_face(row)
        cells: list[str | Text] = [
            Text(f"{row.index} {row.shot_id[:8]}"),
            Text(row.scenario or "—"),
            Text(row.provider),
            fmt_latency(row.latency_ms),
            fmt_cost(row.cost_usd),
            Text(face, style="red") if face == "no face" else face,
            fmt_number(row.clip_similarity) + (" (uncal.)" if row.clip_calibrated is False else ""),
            fmt_number(row.prompt_similarity),
            _verdict_text(row.verdict),
        ]
        if stats["simulated"]:
            missed = row.gate in {"MISSED", "false alarm"}
            cells.append(Text(fmt_ground_truth(row), style="bold red" if missed else ""))
        table.add_row(*cells)
    return table


def stats_table(character: Mapping[str, Any]) -> Table:
    table = Table(
        title=stats_title(character),
        caption=Text("\n".join(stats_notes(character))),
        caption_justify="left",
    )
    for header in STATS_HEADERS:
        table.add_column(header, justify="left" if header == "scenario" else "right")
    previous = "scenario"
    for line in stats_lines(character):
        if line.kind != previous:
            table.add_section()
        previous = line.kind
        table.add_row(Text(line.label), *stats_cells(line), style="bold" if line.kind == "all" else None)
    return table


# --- CSV ---------------------------------------------------------------------------------------------

_CHARACTER_COLUMNS = (
    "character_id",
    "character_name",
    "strategy",
    "character_provider",
    "character_status",
    "identity_state",
    "identity_simulated",
    "identity_cost_usd",
    "training_seconds",
)
_SHOT_EXTRA_COLUMNS = (
    "status",
    "prompt",
    "seed",
    "attempts",
    "face_mean_distance",
    "face_max_distance",
    "face_centroid_distance",
    "face_candidates",
    "face_notes",
    "face_same_below",
    "face_model",
    "clip_model",
    "scorer_version",
    "calibration_profile",
    "score_basis",
    "score_reason",
    "failure_stage",
    "failure_reason",
    "sim_transform",
    "image_sha256",
)
CSV_COLUMNS = _CHARACTER_COLUMNS + tuple(f.name for f in fields(ShotRow)) + _SHOT_EXTRA_COLUMNS


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: no precision lost
    text = str(value)
    # A text cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP CSV injection).
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_csv(character: Mapping[str, Any], path: Path) -> Path:
    identity = character.get("identity")
    shared = {
        "character_id": character.get("character_id"),
        "character_name": character.get("name"),
        "strategy": character.get("strategy"),
        "character_provider": character.get("provider"),
        "character_status": character.get("status"),
        "identity_state": lookup(identity, "state"),
        "identity_simulated": lookup(identity, "simulated"),
        "identity_cost_usd": lookup(identity, "cost_usd"),
        "training_seconds": lookup(identity, "training_seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for row, shot in zip(shot_rows(character), _shots(character), strict=True):
            extra = {
                "status": shot.get("status"),
                "prompt": lookup(shot, "params", "prompt"),
                "seed": lookup(shot, "params", "seed"),
                "attempts": shot.get("attempts"),
                "face_mean_distance": lookup(shot, "score", "face", "mean_distance"),
                "face_max_distance": lookup(shot, "score", "face", "max_distance"),
                "face_centroid_distance": lookup(shot, "score", "face", "centroid_distance"),
                "face_candidates": lookup(shot, "score", "face", "candidates"),
                "face_notes": " ".join(lookup(shot, "score", "face", "notes") or []),
                "face_same_below": lookup(shot, "score", "face", "same_below"),
                "face_model": lookup(shot, "score", "face", "model"),
                "clip_model": lookup(shot, "score", "clip", "model"),
                "scorer_version": lookup(shot, "score", "scorer_version"),
                "calibration_profile": lookup(shot, "score", "calibration_profile"),
                "score_basis": lookup(shot, "score", "basis"),
                "score_reason": lookup(shot, "score", "reason"),
                "failure_stage": lookup(shot, "failure", "stage"),
                "failure_reason": lookup(shot, "failure", "reason"),
                "sim_transform": lookup(shot, "simulation", "transform"),
                "image_sha256": lookup(shot, "image", "sha256"),
            }
            values = shared | asdict(row) | extra
            writer.writerow(_csv_cell(values[column]) for column in CSV_COLUMNS)
    return path


# --- HTML --------------------------------------------------------------------------------------------


def _image_file(ref: Any) -> str | None:
    """`images/<sha256>.<ext>` for an ImageRef-like dict, or None if it cannot name a safe file."""
    sha256, ext = lookup(ref, "sha256"), _EXTENSIONS.get(str(lookup(ref, "content_type")))
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or ext is None:
        return None
    return f"images/{sha256}.{ext}"


def _write_images(refs: Iterable[Any], images: Mapping[str, bytes], out_dir: Path) -> set[str]:
    written: set[str] = set()
    for ref in refs:
        name = _image_file(ref)
        data = images.get(lookup(ref, "sha256") or "")
        if name is None or data is None or name in written:
            continue
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise ValueError(f"image bytes given for {ref['sha256']} do not hash to it")
        (out_dir / name).write_bytes(data)
        written.add(name)
    return written


_PAGE_FIELDS = ("name", "strategy", "provider", "status", "character_id", "created_at")


def _failure(shot: Mapping[str, Any]) -> dict[str, str] | None:
    if shot.get("failure") is None:
        return None
    return {
        "stage": str(lookup(shot, "failure", "stage") or "unknown"),
        "reason": str(lookup(shot, "failure", "reason") or ""),
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(latency=fmt_latency, cost=fmt_cost, number=fmt_number)
    return env


def render_html(character: Mapping[str, Any], available: set[str]) -> str:
    """The page's HTML; `available` holds the `images/...` paths that exist beside it."""
    template = _TEMPLATE.read_text(encoding="utf-8")
    shots = []
    for row, shot in zip(shot_rows(character), _shots(character), strict=True):
        image = _image_file(shot.get("image"))
        shots.append(
            {
                "row": row,
                "face": fmt_face(row),
                "ground_truth": fmt_ground_truth(row),
                "flagged": row.verdict != "same",
                "verdict_class": row.verdict.split(":")[0].replace("_", "-"),
                "prompt": lookup(shot, "params", "prompt") or "",
                "reason": lookup(shot, "score", "reason") or "",
                "failure": _failure(shot),
                "attempts": shot.get("attempts"),
                "image": image if image in available else None,
                "width": lookup(shot, "image", "width"),
                "height": lookup(shot, "image", "height"),
            }
        )
    references = [
        {
            "file": _image_file(ref) if _image_file(ref) in available else None,
            "width": lookup(ref, "width"),
            "height": lookup(ref, "height"),
            "content_type": lookup(ref, "content_type"),
        }
        for ref in character.get("references") or []
    ]
    identity = character.get("identity")
    stats = summary(character)
    return (
        _environment()
        .from_string(template)
        .render(
            character={key: character.get(key) or "" for key in _PAGE_FIELDS},
            identity=None
            if not isinstance(identity, Mapping)
            else {key: identity.get(key) for key in ("state", "simulated", "training_seconds", "cost_usd")},
            references=references,
            shots=shots,
            stats=stats,
            summary_line=summary_line(stats),
            stats_title=stats_title(character),
            stats_headers=STATS_HEADERS,
            stats_lines=[
                {"kind": line.kind, "label": line.label, "cells": stats_cells(line)} for line in stats_lines(character)
            ],
            stats_notes=stats_notes(character),
            simulated_banner=SIMULATED_BANNER,
            uncalibrated_banner=UNCALIBRATED_BANNER,
            generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


def write_html(character: Mapping[str, Any], images: Mapping[str, bytes], out_dir: Path) -> Path:
    """Write `out_dir/index.html` and `out_dir/images/<sha256>.<ext>`; the page needs nothing else."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    refs = [*(character.get("references") or []), *(shot.get("image") for shot in _shots(character))]
    available = _write_images(refs, images, out_dir)
    page = out_dir / "index.html"
    page.write_text(render_html(character, available), encoding="utf-8")
    return page
