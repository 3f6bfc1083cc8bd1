"""How well face distance separates labelled pairs, and the thresholds it suggests. Pure: no I/O.

Inputs are two lists of L2 face distances, one for pairs labelled "same" and one for pairs
labelled "different". A pair is called "same" when its distance is *below* the threshold
(`distance < t`, exactly like `scorer.face_verdict`), so "same" is the positive class and a smaller
distance is stronger evidence for it.

- `roc_auc`: the probability that a random "same" pair is closer than a random "different" one,
  ties counting one half (the Mann-Whitney rank statistic, computed exactly from mid-ranks).
- The rates only change at observed distances, so the thresholds worth trying are the midpoints
  between neighbouring distinct distances (plus one below and one above them all); a midpoint
  sits as far as it can from both neighbours.
- `equal_error_rate`: the candidate where the false-positive and false-negative rates are closest;
  the EER reported is their mean there. It is the threshold a profile saves: it weighs both kinds
  of mistake equally however unbalanced the pairs are, whereas the best-accuracy threshold follows
  whichever label has more pairs and moves with a handful of borderline pairs on a small set.
- `best_accuracy`: the candidate with the most pairs right; ties go to the lowest threshold, the
  one that calls fewest pairs "same".
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from services.scoring.ports import ScoringModelError
from services.scoring.scorer import ScoringThresholds

PROFILE_FORMAT = "likeness.calibration_profile.v1"
PROFILE_NAME = re.compile(r"[a-z0-9_-]{1,64}")


class CalibrationProfileError(ScoringModelError):
    """A calibration profile is unreadable or belongs to another face model. The message says what to do."""


@dataclass(frozen=True)
class Confusion:
    """What calling `distance < threshold` "same" does to the labelled pairs ("same" is positive)."""

    threshold: float
    true_positives: int  # same pairs called same
    false_negatives: int  # same pairs called different
    false_positives: int  # different pairs called same
    true_negatives: int  # different pairs called different

    @property
    def pairs(self) -> int:
        return self.true_positives + self.false_negatives + self.false_positives + self.true_negatives

    @property
    def accuracy(self) -> float:
        return (self.true_positives + self.true_negatives) / self.pairs

    @property
    def true_positive_rate(self) -> float:
        return self.true_positives / (self.true_positives + self.false_negatives)

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / (self.false_positives + self.true_negatives)

    @property
    def false_negative_rate(self) -> float:
        return 1.0 - self.true_positive_rate


def roc_auc(same: Sequence[float], different: Sequence[float]) -> float:
    """Area under the ROC curve of distance as a "different" score (1.0: every same pair is closer)."""
    _check(same, different)
    labelled = sorted([(d, False) for d in same] + [(d, True) for d in different])
    # Twice each mid-rank is an integer (ranks i+1..j share (i+1+j)/2), so the sum stays exact.
    twice_rank_sum_different = 0
    start = 0
    while start < len(labelled):
        end = start
        while end < len(labelled) and labelled[end][0] == labelled[start][0]:
            end += 1
        different_in_group = sum(1 for _, is_different in labelled[start:end] if is_different)
        twice_rank_sum_different += different_in_group * (start + 1 + end)
        start = end
    n_same, n_different = len(same), len(different)
    twice_u = twice_rank_sum_different - n_different * (n_different + 1)
    return twice_u / (2 * n_same * n_different)


def confusion_at(same: Sequence[float], different: Sequence[float], threshold: float) -> Confusion:
    """Counts when pairs with `distance < threshold` are called "same"."""
    _check(same, different)
    return _confusions(same, different, [threshold])[0]


def candidate_thresholds(same: Sequence[float], different: Sequence[float]) -> list[float]:
    """One threshold per distinct outcome: the lowest distance, each midpoint, just above the highest."""
    _check(same, different)
    values = sorted(set(same) | set(different))
    candidates = [values[0]]
    for low, high in itertools.pairwise(values):
        middle = (low + high) / 2
        candidates.append(middle if low < middle < high else high)
    candidates.append(math.nextafter(values[-1], math.inf))
    return candidates


def equal_error_rate(same: Sequence[float], different: Sequence[float]) -> Confusion:
    """The candidate threshold where false-positive and false-negative rates are closest (then lowest)."""
    confusions = _confusions(same, different, candidate_thresholds(same, different))
    return min(confusions, key=lambda c: (abs(c.false_positive_rate - c.false_negative_rate), eer_of(c), c.threshold))


def eer_of(confusion: Confusion) -> float:
    """The equal error rate at an EER point: the mean of its false-positive and false-negative rates."""
    return (confusion.false_positive_rate + confusion.false_negative_rate) / 2


def best_accuracy(same: Sequence[float], different: Sequence[float]) -> Confusion:
    """The candidate threshold with the most pairs right; ties go to the lowest threshold."""
    confusions = _confusions(same, different, candidate_thresholds(same, different))
    return min(confusions, key=lambda c: (-(c.true_positives + c.true_negatives), c.threshold))


@dataclass(frozen=True)
class CalibrationReport:
    """Every figure `likeness calibrate` prints, for one face model on one file of labelled pairs."""

    face_model: str
    source: str
    same_pairs: int  # scored (both images show a face)
    different_pairs: int
    no_face_pairs: tuple[tuple[str, str], ...]  # not scored
    no_face_images: tuple[str, ...]
    auc: float
    eer: float
    at_eer: Confusion
    in_use: Confusion  # at the threshold the caller is using
    at_best_accuracy: Confusion

    @property
    def pairs_in_file(self) -> int:
        return self.same_pairs + self.different_pairs + len(self.no_face_pairs)


def calibration_report(
    same: Sequence[float],
    different: Sequence[float],
    *,
    threshold: float,
    face_model: str,
    source: str,
    no_face_pairs: Sequence[tuple[str, str]] = (),
    no_face_images: Sequence[str] = (),
) -> CalibrationReport:
    at_eer = equal_error_rate(same, different)
    return CalibrationReport(
        face_model=face_model,
        source=source,
        same_pairs=len(same),
        different_pairs=len(different),
        no_face_pairs=tuple(no_face_pairs),
        no_face_images=tuple(no_face_images),
        auc=roc_auc(same, different),
        eer=eer_of(at_eer),
        at_eer=at_eer,
        in_use=confusion_at(same, different, threshold),
        at_best_accuracy=best_accuracy(same, different),
    )


@dataclass(frozen=True)
class ProfileFigures:
    """How the profile's threshold did on the pairs it was calibrated on."""

    source: str  # the pairs file's name
    pairs: int  # pairs scored (both images show a face)
    same_pairs: int
    different_pairs: int
    no_face_pairs: int
    auc: float
    eer: float
    threshold: float  # the EER threshold
    accuracy: float  # at `threshold`


@dataclass(frozen=True)
class CalibrationProfile:
    """Face thresholds calibrated for one face model, saved as JSON for the scoring service."""

    name: str
    created_at: datetime
    face_model: str
    face_same_below: float
    face_uncertain_below: float
    figures: ProfileFigures

    def __post_init__(self) -> None:
        validate_profile_name(self.name)
        if self.created_at.utcoffset() is None:
            raise ValueError("created_at must carry a time zone (UTC)")
        ScoringThresholds(self.face_same_below, self.face_uncertain_below)  # raises if out of order

    @property
    def thresholds(self) -> ScoringThresholds:
        return ScoringThresholds(face_same_below=self.face_same_below, face_uncertain_below=self.face_uncertain_below)

    def thresholds_for(self, face_model: str) -> ScoringThresholds:
        """The thresholds, provided `face_model` is the model they were calibrated for."""
        if face_model != self.face_model:
            raise CalibrationProfileError(
                f"calibration profile {self.name!r} was made with face model {self.face_model!r}, but the scorer "
                f"runs {face_model!r}: distances from different models are not comparable. Run `likeness "
                "calibrate --save NAME` with the current settings, or unset LIKENESS_SCORING_CALIBRATION_PROFILE."
            )
        return self.thresholds

    def to_json(self) -> str:
        document: dict[str, Any] = {"format": PROFILE_FORMAT, **asdict(self)}
        document["created_at"] = self.created_at.isoformat()
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CalibrationProfile:
        """Read `to_json` output. Raises CalibrationProfileError for anything else."""
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("format") != PROFILE_FORMAT:
                raise ValueError(f"not a {PROFILE_FORMAT} document")
            fields = {key: value for key, value in document.items() if key != "format"}
            figures = fields.pop("figures")
            if not isinstance(figures, dict):
                raise ValueError("figures must be an object")
            return cls(
                **{
                    **fields,
                    "created_at": datetime.fromisoformat(fields["created_at"]),
                    "face_same_below": float(fields["face_same_below"]),
                    "face_uncertain_below": float(fields["face_uncertain_below"]),
                    "figures": ProfileFigures(**figures),
                }
            )
        except (ValueError, TypeError, KeyError) as error:
            raise CalibrationProfileError(
                f"not a calibration profile ({type(error).__name__}: {error}); make one with "
                "`likeness calibrate --pairs PAIRS.csv --images DIR --save NAME`"
            ) from error


def profile_from_report(
    report: CalibrationReport, *, name: str, created_at: datetime, uncertain_band: float | None = None
) -> CalibrationProfile:
    """A profile at the report's EER threshold t: no uncertain band, or [t - band/2, t + band/2)."""
    threshold = report.at_eer.threshold
    if threshold <= 0.0:
        raise ValueError(f"the EER threshold is {threshold}; a profile needs one above 0 (check the pairs)")
    same_below = uncertain_below = threshold
    if uncertain_band is not None:
        if not uncertain_band > 0.0:
            raise ValueError(f"the uncertain band's width must be > 0, got {uncertain_band}")
        same_below, uncertain_below = threshold - uncertain_band / 2, threshold + uncertain_band / 2
        if same_below <= 0.0:
            raise ValueError(
                f"an uncertain band {uncertain_band} wide around the EER threshold {threshold:.4f} would reach "
                "below 0: choose a narrower band"
            )
    return CalibrationProfile(
        name=name,
        created_at=created_at,
        face_model=report.face_model,
        face_same_below=same_below,
        face_uncertain_below=uncertain_below,
        figures=ProfileFigures(
            source=report.source,
            pairs=report.same_pairs + report.different_pairs,
            same_pairs=report.same_pairs,
            different_pairs=report.different_pairs,
            no_face_pairs=len(report.no_face_pairs),
            auc=report.auc,
            eer=report.eer,
            threshold=threshold,
            accuracy=report.at_eer.accuracy,
        ),
    )


def validate_profile_name(name: str) -> str:
    """Return `name` if it is 1-64 characters of a-z, 0-9, '_' and '-' (it becomes a file name)."""
    if not PROFILE_NAME.fullmatch(name):
        raise ValueError(
            f"profile name {name!r} is not allowed: use 1 to 64 characters from a-z, 0-9, '_' and '-' "
            "(e.g. dlib-2026-11)"
        )
    return name


def _check(same: Sequence[float], different: Sequence[float]) -> None:
    if not same or not different:
        raise ValueError(
            f"calibration needs at least one 'same' and one 'different' pair; got {len(same)} and {len(different)}"
        )
    if not all(math.isfinite(d) for d in [*same, *different]):
        raise ValueError("every distance must be a finite number")


def _confusions(same: Sequence[float], different: Sequence[float], thresholds: Sequence[float]) -> list[Confusion]:
    sorted_same = np.sort(np.asarray(same, dtype=np.float64))
    sorted_different = np.sort(np.asarray(different, dtype=np.float64))
    at = np.asarray(thresholds, dtype=np.float64)
    same_called_same = np.searchsorted(sorted_same, at, side="left")  # how many are < t
    different_called_same = np.searchsorted(sorted_different, at, side="left")
    return [
        Confusion(
            threshold=float(t),
            true_positives=int(tp),
            false_negatives=len(same) - int(tp),
            false_positives=int(fp),
            true_negatives=len(different) - int(fp),
        )
        for t, tp, fp in zip(thresholds, same_called_same, different_called_same, strict=True)
    ]
