"""`likeness calibrate`: face distance on labelled pairs, the thresholds it suggests, a saved profile.

The figures come from `services.scoring.calibration` (pure); this module reads the pairs file and
the images, runs the face embedder once per distinct image, prints, and writes profiles. With
`--folds K` it also prints an identity-disjoint cross-validation: the EER threshold fitted without
some people, judged on those people's pairs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import ValidationError
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.scoring.calibration import (
    CalibrationProfile,
    CalibrationProfileError,
    CalibrationReport,
    Confusion,
    CrossValidation,
    HeldOutCounts,
    ImagePair,
    ScoredPair,
    assign_folds,
    calibration_report,
    cross_validate,
    identity_groups,
    profile_from_report,
    validate_profile_name,
)
from services.scoring.ports import FaceDescriptor, FaceEmbedder
from services.scoring.settings import ScoringSettings

PAIRS_HEADER = ("image_a", "image_b", "label")
LABELS = {"same": True, "different": False}
_LISTED_AT_MOST = 20


class CalibrationInputError(Exception):
    """Something the operator gave `likeness calibrate` is unusable; the message says what to fix."""


@dataclass(frozen=True)
class LabelledPair:
    image_a: str  # relative to the images folder
    image_b: str
    same: bool


@dataclass(frozen=True)
class ThresholdInUse:
    value: float
    source: str  # where it came from, in words


@dataclass(frozen=True)
class ScoredPairs:
    """Every pair in the file with its face distance (None: no face in an image), in file order."""

    pairs: tuple[ScoredPair, ...]
    no_face_images: tuple[str, ...]


@dataclass(frozen=True)
class CalibrationRun:
    """What `calibrate` computed: the report, and the cross-validation when --folds asked for one."""

    report: CalibrationReport
    cross_validation: CrossValidation | None


def read_pairs(pairs_csv: Path, images_dir: Path) -> list[LabelledPair]:
    """The pairs in `pairs_csv`, after checking the header, every label and that every image exists."""
    if not pairs_csv.is_file():
        raise CalibrationInputError(f"pairs file {pairs_csv} not found: pass --pairs a CSV file")
    if not images_dir.is_dir():
        raise CalibrationInputError(
            f"images folder {images_dir} not found: pass --images the folder the CSV's paths are relative to"
        )
    try:
        with pairs_csv.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise CalibrationInputError(f"{pairs_csv} is not a readable UTF-8 CSV file ({error})") from error
    if not rows or tuple(cell.strip() for cell in rows[0]) != PAIRS_HEADER:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise CalibrationInputError(
            f"{pairs_csv}: the first line must be the header `{','.join(PAIRS_HEADER)}`; found `{found}`"
        )
    pairs = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(PAIRS_HEADER):
            raise CalibrationInputError(
                f"{pairs_csv} line {line_number}: expected 3 fields (image_a,image_b,label), found {len(row)}"
            )
        image_a, image_b, label = (cell.strip() for cell in row)
        if label not in LABELS:
            raise CalibrationInputError(
                f"{pairs_csv} line {line_number}: unknown label {label!r}; use `same` or `different`"
            )
        if not image_a or not image_b:
            raise CalibrationInputError(f"{pairs_csv} line {line_number}: an image path is empty")
        pairs.append(LabelledPair(image_a, image_b, LABELS[label]))
    if not pairs:
        raise CalibrationInputError(f"{pairs_csv} has a header but no pairs: add lines `image_a,image_b,label`")
    missing = sorted({name for pair in pairs for name in (pair.image_a, pair.image_b)} - _existing(pairs, images_dir))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CalibrationInputError(
            f"{len(missing)} image(s) named in {pairs_csv} are not in {images_dir}: {shown}. "
            "Paths in the CSV are relative to --images."
        )
    return pairs


def _existing(pairs: Sequence[LabelledPair], images_dir: Path) -> set[str]:
    names = {name for pair in pairs for name in (pair.image_a, pair.image_b)}
    return {name for name in names if (images_dir / name).is_file()}


def describe_images(
    names: Sequence[str], images_dir: Path, embedder: FaceEmbedder, console: Console
) -> dict[str, FaceDescriptor | None]:
    """Each image's face descriptor (None: no face found), computed once, with a progress bar."""
    descriptors: dict[str, FaceDescriptor | None] = {}
    columns = (TextColumn("describing faces"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("faces", total=len(names))
        for name in names:
            path = images_dir / name
            try:
                with Image.open(path) as image:
                    image.load()
                    descriptors[name] = embedder.observe(image).descriptor
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise CalibrationInputError(
                    f"cannot read image {path} ({error}); replace it, or remove its pairs from the CSV"
                ) from error
            progress.advance(task)
    return descriptors


def score_pairs(
    pairs: Sequence[LabelledPair], images_dir: Path, *, embedder: FaceEmbedder, console: Console
) -> ScoredPairs:
    """Describe every distinct image once and give each pair its face distance (None: no face)."""
    names = sorted({name for pair in pairs for name in (pair.image_a, pair.image_b)})
    descriptors = describe_images(names, images_dir, embedder, console)
    scored = []
    for pair in pairs:
        a, b = descriptors[pair.image_a], descriptors[pair.image_b]
        distance = None
        if a is not None and b is not None:
            distance = float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))
        scored.append(ScoredPair(pair.image_a, pair.image_b, pair.same, distance))
    return ScoredPairs(tuple(scored), tuple(name for name in names if descriptors[name] is None))


def report_from(scored: ScoredPairs, pairs_csv: Path, *, threshold: float, face_model: str) -> CalibrationReport:
    """The report's figures over the scored pairs; pairs with no face are counted and listed."""
    same = [p.distance for p in scored.pairs if p.same and p.distance is not None]
    different = [p.distance for p in scored.pairs if not p.same and p.distance is not None]
    no_face = [(p.image_a, p.image_b) for p in scored.pairs if p.distance is None]
    if not same or not different:
        raise CalibrationInputError(
            f"{pairs_csv}: after leaving out {len(no_face)} pair(s) with no face, {len(same)} same and "
            f"{len(different)} different pair(s) remain; calibration needs at least one of each"
        )
    return calibration_report(
        same,
        different,
        threshold=threshold,
        face_model=face_model,
        source=pairs_csv.name,
        no_face_pairs=no_face,
        no_face_images=scored.no_face_images,
    )


def run_calibration(
    pairs_csv: Path, images_dir: Path, *, embedder: FaceEmbedder, threshold: float, console: Console
) -> CalibrationReport:
    """Read the pairs, describe every distinct image once, and compute the report's figures."""
    pairs = read_pairs(pairs_csv, images_dir)
    scored = score_pairs(pairs, images_dir, embedder=embedder, console=console)
    return report_from(scored, pairs_csv, threshold=threshold, face_model=embedder.model_name)


def check_folds(pairs: Sequence[ImagePair], folds: int, pairs_csv: Path) -> None:
    """Refuse --folds K before any image is described, unless 2 <= K <= the number of identity groups."""
    try:
        assign_folds(pairs, folds)
    except ValueError as error:
        groups = len(identity_groups(pairs))
        advice = (
            f"choose --folds from 2 to {groups}" if groups >= 2 else "add pairs with other people, or leave --folds out"
        )
        raise CalibrationInputError(f"--folds {folds}: in {pairs_csv}, {error}. To fix: {advice}") from error


def threshold_in_use(settings: ScoringSettings, face_model: str, override: float | None) -> ThresholdInUse:
    """The threshold the scoring service would use (or --threshold): its profile's, else its setting."""
    if override is not None:
        if not override > 0.0:
            raise CalibrationInputError(f"--threshold must be above 0, got {override}")
        return ThresholdInUse(override, "--threshold")
    if settings.calibration_profile is not None:
        profile = read_profile(settings.calibration_profile)
        try:
            thresholds = profile.thresholds_for(face_model)
        except CalibrationProfileError as error:
            raise CalibrationInputError(str(error)) from error
        return ThresholdInUse(thresholds.face_same_below, f"profile {profile.name!r}")
    return ThresholdInUse(settings.face_same_below, "setting face_same_below")


def read_profile(path: Path) -> CalibrationProfile:
    try:
        return CalibrationProfile.from_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CalibrationInputError(
            f"LIKENESS_SCORING_CALIBRATION_PROFILE={path} cannot be read ({error}); point it at a saved profile"
        ) from error
    except CalibrationProfileError as error:
        raise CalibrationInputError(f"{path}: {error}") from error


def scoring_settings() -> ScoringSettings:
    try:
        return ScoringSettings()
    except ValidationError as error:
        raise CalibrationInputError(f"a LIKENESS_SCORING_ setting is invalid: {error}") from error


def report_renderable(report: CalibrationReport, in_use: ThresholdInUse) -> Group:
    """The figures as rich tables, headed by the face model that produced them."""
    summary = Table(title=f"Face calibration on {report.source}", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    scored = report.same_pairs + report.different_pairs
    summary.add_row("pairs in file", f"{report.pairs_in_file:,}")
    summary.add_row("pairs scored", f"{scored:,} ({report.same_pairs:,} same, {report.different_pairs:,} different)")
    summary.add_row("pairs with no face (not scored)", f"{len(report.no_face_pairs):,}")
    summary.add_row("ROC AUC (smaller distance = same)", f"{report.auc:.6f}")
    summary.add_row("equal-error-rate threshold", f"{report.at_eer.threshold:.4f}")
    summary.add_row("equal error rate", f"{report.eer:.4f}")

    thresholds = Table(title="Calling a pair 'same' when its face distance is below the threshold")
    thresholds.add_column("")
    points = [(f"in use ({in_use.source})", report.in_use), ("EER", report.at_eer)]
    points.append(("best accuracy on these pairs", report.at_best_accuracy))
    for title, _ in points:
        thresholds.add_column(title, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("threshold", [f"{c.threshold:.4f}" for _, c in points]),
        ("accuracy", [f"{c.accuracy:.4f} ({c.true_positives + c.true_negatives:,}/{c.pairs:,})" for _, c in points]),
        ("true-positive rate", [f"{c.true_positive_rate:.4f}" for _, c in points]),
        ("false-positive rate", [f"{c.false_positive_rate:.4f}" for _, c in points]),
        *_confusion_rows([c for _, c in points]),
    ]
    for label, cells in rows:
        thresholds.add_row(label, *cells)

    model = f"Figures from face model: [bold]{report.face_model}[/bold] (they hold for this model only)."
    parts: list[Table | str] = [model, summary, thresholds]
    if report.no_face_pairs:
        parts.append(f"No face found in {len(report.no_face_images)} image(s): {', '.join(report.no_face_images)}")
        parts.append(f"{len(report.no_face_pairs)} pair(s) not scored:")
        parts.extend(f"  {a}  vs  {b}" for a, b in report.no_face_pairs[:_LISTED_AT_MOST])
        if len(report.no_face_pairs) > _LISTED_AT_MOST:
            parts.append(f"  ... and {len(report.no_face_pairs) - _LISTED_AT_MOST} more")
    return Group(*parts)


def cross_validation_renderable(cv: CrossValidation, in_use: ThresholdInUse, source: str) -> Group:
    """Per fold: what it trained and was tested on, its fitted threshold and held-out figures; then pooled."""
    table = Table(
        title=f"Identity-disjoint cross-validation on {source}: {len(cv.folds)} folds of whole people "
        f"({cv.groups} identity groups, from the 'same' pairs)"
    )
    headers = ("fold", "people\n(images)", "training pairs\nsame / different", "test pairs\nsame / different")
    for header in headers:
        table.add_column(header, justify="right")
    table.add_column("fitted EER\nthreshold", justify="right")
    table.add_column("held-out\naccuracy", justify="right")
    table.add_column("TPR", justify="right")
    table.add_column("FPR", justify="right")
    table.add_column(f"accuracy at\n{cv.fixed_threshold:.4f}", justify="right")
    for fold in cv.folds:
        counts = [
            str(fold.fold),
            f"{fold.groups:,} ({fold.images:,})",
            f"{fold.training_same:,} / {fold.training_different:,}",
            f"{fold.test_same:,} / {fold.test_different:,}",
        ]
        if fold.threshold is None or fold.held_out is None or fold.at_fixed is None:
            table.add_row(*counts, "not evaluated", "-", "-", "-", "-")
            continue
        table.add_row(*counts, f"{fold.threshold:.4f}", *_held_out_cells(fold.held_out), _accuracy_cell(fold.at_fixed))
    held_out, at_fixed = cv.held_out, cv.at_fixed
    tested = [f for f in cv.folds if f.held_out is not None]
    table.add_row(
        "pooled",
        f"{cv.groups:,} ({sum(f.images for f in cv.folds):,})",
        "",
        f"{sum(f.test_same for f in tested):,} / {sum(f.test_different for f in tested):,}",
        "one per fold",
        *_held_out_cells(held_out),
        _accuracy_cell(at_fixed),
        end_section=True,
    )

    parts: list[Table | str] = [table]
    if held_out.pairs:
        parts.append(
            f"Pooled held-out accuracy {_accuracy_cell(held_out)} over the test pairs of {cv.evaluated} of "
            f"{len(cv.folds)} folds, each fold at the EER threshold fitted on the other folds' people; "
            f"the fixed threshold in use ({in_use.source}) {cv.fixed_threshold:.4f} gets {_accuracy_cell(at_fixed)} "
            "of the same pairs."
        )
    else:
        parts.append("No fold could be evaluated, so there is no held-out accuracy.")
    parts.extend(f"Fold {f.fold} not evaluated: {f.not_evaluated}." for f in cv.folds if f.not_evaluated)
    parts.append(
        f"{cv.across_folds:,} scored pair(s) join people in two different folds: no fold tests them, and a fold "
        "trains on one only when neither of its images is in that fold."
    )
    if cv.not_scored:
        parts.append(f"{cv.not_scored:,} pair(s) with no face are not used.")
    return Group(*parts)


def _held_out_cells(counts: HeldOutCounts) -> list[str]:
    return [_accuracy_cell(counts), _rate_cell(counts.true_positive_rate), _rate_cell(counts.false_positive_rate)]


def _accuracy_cell(counts: HeldOutCounts) -> str:
    return f"{_rate_cell(counts.accuracy)} ({counts.right:,}/{counts.pairs:,})"


def _rate_cell(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.4f}"


def _confusion_rows(confusions: Sequence[Confusion]) -> list[tuple[str, list[str]]]:
    return [
        ("same called same (TP)", [f"{c.true_positives:,}" for c in confusions]),
        ("same called different (FN)", [f"{c.false_negatives:,}" for c in confusions]),
        ("different called same (FP)", [f"{c.false_positives:,}" for c in confusions]),
        ("different called different (TN)", [f"{c.true_negatives:,}" for c in confusions]),
    ]


def save_profile(profile: CalibrationProfile, calibration_dir: Path) -> Path:
    """Write `<calibration_dir>/<name>.json` (replacing one of that name) and return its path."""
    calibration_dir.mkdir(parents=True, exist_ok=True)
    path = calibration_dir / f"{validate_profile_name(profile.name)}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(profile.to_json(), encoding="utf-8")
    os.replace(partial, path)
    return path


def calibrate(
    pairs_csv: Path,
    images_dir: Path,
    *,
    calibration_dir: Path,
    console: Console,
    save: str | None = None,
    threshold: float | None = None,
    uncertain_band: float | None = None,
    folds: int | None = None,
    embedder: FaceEmbedder | None = None,
) -> CalibrationRun:
    """The whole command: check the arguments, compute and print the figures, save a profile if asked."""
    if save is not None:
        try:
            validate_profile_name(save)
        except ValueError as error:
            raise CalibrationInputError(f"--save: {error}") from error
    if uncertain_band is not None and save is None:
        raise CalibrationInputError("--uncertain-band only shapes a saved profile: add --save NAME")
    if uncertain_band is not None and not uncertain_band > 0.0:
        raise CalibrationInputError(f"--uncertain-band must be above 0, got {uncertain_band}")
    if folds is not None and folds < 2:
        raise CalibrationInputError(f"--folds must be at least 2, got {folds}; leave it out for no cross-validation")
    settings = scoring_settings()
    if embedder is None:  # the face model the scoring service would run (LIKENESS_SCORING_FACE_BACKEND, ...)
        from services.scoring.adapters.models import build_face_embedder

        embedder = build_face_embedder(settings.model_copy(update={"face_process": False}))
    in_use = threshold_in_use(settings, embedder.model_name, threshold)
    pairs = read_pairs(pairs_csv, images_dir)
    if folds is not None:
        check_folds(pairs, folds, pairs_csv)
    scored = score_pairs(pairs, images_dir, embedder=embedder, console=console)
    report = report_from(scored, pairs_csv, threshold=in_use.value, face_model=embedder.model_name)
    console.print(report_renderable(report, in_use))
    cross_validation = None
    if folds is not None:
        cross_validation = cross_validate(scored.pairs, folds, fixed_threshold=in_use.value)
        console.print(cross_validation_renderable(cross_validation, in_use, report.source))
    run = CalibrationRun(report, cross_validation)
    if save is None:
        return run
    try:
        profile = profile_from_report(report, name=save, created_at=datetime.now(UTC), uncertain_band=uncertain_band)
    except ValueError as error:
        raise CalibrationInputError(f"--save {save}: {error}") from error
    path = save_profile(profile, calibration_dir)
    console.print(
        f"Saved profile {save!r} to {path}: face_same_below {profile.face_same_below:.4f}, "
        f"face_uncertain_below {profile.face_uncertain_below:.4f}. It holds the EER threshold, which weighs "
        "false matches and misses equally; the best-accuracy threshold follows whichever label has more pairs "
        "and overfits a small set. "
        f"The scoring service uses it with LIKENESS_SCORING_CALIBRATION_PROFILE={path}"
    )
    return run
