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

Identity-disjoint cross-validation (`cross_validate`) asks whether a threshold fitted on some people
holds for people it has never seen:

- `identity_groups`: the images fall into identities without a label file: the connected components
  of the graph whose edges are the "same" pairs (one per person; an image only ever in "different"
  pairs is a group of its own).
- `assign_folds`: deterministic, no randomness. Groups are taken largest first (most images, then
  most pairs with both images inside the group, then smallest path) and each goes to the fold with
  the fewest images so far (then fewest such pairs, then the lowest number). Balancing images rather
  than "same" pairs spreads the people, so most folds hold several and are tested on "different"
  pairs too. K must be 2 to the number of groups, so that no fold is empty.
- `split_fold`: for fold k, the training pairs have both images in other folds, the test pairs have
  both images in fold k, and a pair with one image in fold k and one outside is used for neither. A
  person's images are therefore never on both sides.
- Each fold's threshold is the EER threshold of its training pairs, and is judged on its test pairs;
  the pooled held-out accuracy is all folds' right calls over all their test pairs. The same test pairs
  are also judged at one fixed threshold, for comparison. A fold whose training pairs lack a label, or
  that has no test pairs, is not evaluated and says why.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

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


# Identity-disjoint cross-validation.


class ImagePair(Protocol):
    """Two images (paths) and whether they show the same person: what grouping and folds need."""

    @property
    def image_a(self) -> str: ...

    @property
    def image_b(self) -> str: ...

    @property
    def same(self) -> bool: ...


@dataclass(frozen=True)
class ScoredPair:
    """One labelled pair and its face distance; None when an image has no face (the pair is not scored)."""

    image_a: str
    image_b: str
    same: bool
    distance: float | None


def identity_groups(pairs: Iterable[ImagePair]) -> tuple[tuple[str, ...], ...]:
    """The connected components of the "same" pairs' graph over every image in `pairs`.

    Each group is sorted, and the groups are ordered by their smallest path. An image that appears
    only in "different" pairs is a group of its own.
    """
    parent: dict[str, str] = {}

    def root(image: str) -> str:
        parent.setdefault(image, image)
        while parent[image] != image:
            parent[image] = parent[parent[image]]
            image = parent[image]
        return image

    for pair in pairs:
        a, b = root(pair.image_a), root(pair.image_b)
        if pair.same and a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for image in parent:
        members.setdefault(root(image), []).append(image)
    return tuple(sorted(tuple(sorted(group)) for group in members.values()))


def assign_folds(pairs: Sequence[ImagePair], folds: int) -> dict[str, int]:
    """Each image's fold, 0 to `folds` - 1, keeping every identity group whole (see the module docstring).

    Raises ValueError unless 2 <= `folds` <= the number of identity groups.
    """
    groups = identity_groups(pairs)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if folds > len(groups):
        raise ValueError(
            f"the pairs join their images into {len(groups)} identity group(s) (people, found through the 'same' "
            f"pairs), fewer than the {folds} folds asked for; every fold needs a group of its own"
        )
    group_of = {image: index for index, group in enumerate(groups) for image in group}
    inner_pairs = [0] * len(groups)
    for pair in pairs:
        if group_of[pair.image_a] == group_of[pair.image_b]:
            inner_pairs[group_of[pair.image_a]] += 1
    largest_first = sorted(range(len(groups)), key=lambda g: (-len(groups[g]), -inner_pairs[g], groups[g][0]))
    load = [(0, 0)] * folds  # (images, pairs) in each fold so far
    fold_of: dict[str, int] = {}
    for g in largest_first:
        fold = min(range(folds), key=lambda f: (*load[f], f))
        load[fold] = (load[fold][0] + len(groups[g]), load[fold][1] + inner_pairs[g])
        fold_of.update((image, fold) for image in groups[g])
    return fold_of


@dataclass(frozen=True)
class FoldSplit:
    """Fold k's pairs: training (both images outside k), test (both inside), left out (one of each)."""

    training: tuple[ScoredPair, ...]
    test: tuple[ScoredPair, ...]
    left_out: tuple[ScoredPair, ...]


def split_fold(pairs: Iterable[ScoredPair], fold_of: Mapping[str, int], fold: int) -> FoldSplit:
    """Split the scored pairs (distance not None) for `fold`; unscored pairs go nowhere."""
    training: list[ScoredPair] = []
    test: list[ScoredPair] = []
    left_out: list[ScoredPair] = []
    for pair in pairs:
        if pair.distance is None:
            continue
        inside = (fold_of[pair.image_a] == fold) + (fold_of[pair.image_b] == fold)
        (training, left_out, test)[inside].append(pair)
    return FoldSplit(tuple(training), tuple(test), tuple(left_out))


@dataclass(frozen=True)
class HeldOutCounts:
    """Right and wrong calls on test pairs ("same" is positive), summed over one or more folds."""

    true_positives: int
    false_negatives: int
    false_positives: int
    true_negatives: int

    @classmethod
    def of(cls, confusions: Iterable[Confusion | HeldOutCounts]) -> HeldOutCounts:
        listed = list(confusions)
        return cls(
            true_positives=sum(c.true_positives for c in listed),
            false_negatives=sum(c.false_negatives for c in listed),
            false_positives=sum(c.false_positives for c in listed),
            true_negatives=sum(c.true_negatives for c in listed),
        )

    @property
    def pairs(self) -> int:
        return self.true_positives + self.false_negatives + self.false_positives + self.true_negatives

    @property
    def right(self) -> int:
        return self.true_positives + self.true_negatives

    @property
    def accuracy(self) -> float | None:
        """None when there are no pairs; likewise each rate when its label has none."""
        return _ratio(self.right, self.pairs)

    @property
    def true_positive_rate(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)

    @property
    def false_positive_rate(self) -> float | None:
        return _ratio(self.false_positives, self.false_positives + self.true_negatives)


@dataclass(frozen=True)
class FoldResult:
    """One fold: what it trained and was tested on, the threshold it fitted, how that did on its test pairs.

    `threshold`, `held_out` and `at_fixed` are None exactly when `not_evaluated` says why.
    """

    fold: int  # 1 to K
    groups: int  # identity groups in this fold
    images: int
    training_same: int
    training_different: int
    test_same: int
    test_different: int
    left_out: int  # one image in this fold, one outside: neither trained nor tested on
    threshold: float | None  # the training pairs' EER threshold
    held_out: HeldOutCounts | None  # the test pairs at `threshold`
    at_fixed: HeldOutCounts | None  # the test pairs at the fixed threshold
    not_evaluated: str | None = None


@dataclass(frozen=True)
class CrossValidation:
    """Identity-disjoint K-fold cross-validation of the EER threshold, with a fixed threshold beside it."""

    folds: tuple[FoldResult, ...]
    groups: int
    fixed_threshold: float
    across_folds: int  # scored pairs whose images lie in two different folds: never tested on
    not_scored: int  # pairs with no face in an image

    @property
    def held_out(self) -> HeldOutCounts:
        """Every evaluated fold's test pairs, each at its own fitted threshold."""
        return HeldOutCounts.of(f.held_out for f in self.folds if f.held_out is not None)

    @property
    def at_fixed(self) -> HeldOutCounts:
        """The same test pairs at the fixed threshold."""
        return HeldOutCounts.of(f.at_fixed for f in self.folds if f.at_fixed is not None)

    @property
    def evaluated(self) -> int:
        return sum(1 for f in self.folds if f.not_evaluated is None)


def cross_validate(pairs: Sequence[ScoredPair], folds: int, *, fixed_threshold: float) -> CrossValidation:
    """Fit the EER threshold on K-1 folds' pairs and judge it on the held-out fold's, for each fold.

    Folds come from `assign_folds` over every pair (scored or not), so a person stays in one fold.
    Raises ValueError unless 2 <= `folds` <= the number of identity groups.
    """
    fold_of = assign_folds(pairs, folds)
    groups = identity_groups(pairs)
    results = []
    for fold in range(folds):
        split = split_fold(pairs, fold_of, fold)
        train_same, train_different = _distances(split.training)
        test_same, test_different = _distances(split.test)
        problem = _why_not_evaluated(train_same, train_different, split.test)
        threshold: float | None = None
        held_out: HeldOutCounts | None = None
        at_fixed: HeldOutCounts | None = None
        if problem is None:
            threshold = equal_error_rate(train_same, train_different).threshold
            fitted, fixed = _confusions(test_same, test_different, [threshold, fixed_threshold])
            held_out, at_fixed = HeldOutCounts.of([fitted]), HeldOutCounts.of([fixed])
        results.append(
            FoldResult(
                fold=fold + 1,
                groups=sum(1 for group in groups if fold_of[group[0]] == fold),
                images=sum(1 for f in fold_of.values() if f == fold),
                training_same=len(train_same),
                training_different=len(train_different),
                test_same=len(test_same),
                test_different=len(test_different),
                left_out=len(split.left_out),
                threshold=threshold,
                held_out=held_out,
                at_fixed=at_fixed,
                not_evaluated=problem,
            )
        )
    scored = [pair for pair in pairs if pair.distance is not None]
    return CrossValidation(
        folds=tuple(results),
        groups=len(groups),
        fixed_threshold=fixed_threshold,
        across_folds=sum(1 for pair in scored if fold_of[pair.image_a] != fold_of[pair.image_b]),
        not_scored=len(pairs) - len(scored),
    )


def _distances(pairs: Iterable[ScoredPair]) -> tuple[list[float], list[float]]:
    same: list[float] = []
    different: list[float] = []
    for pair in pairs:
        if pair.distance is not None:
            (same if pair.same else different).append(pair.distance)
    return same, different


def _why_not_evaluated(
    train_same: Sequence[float], train_different: Sequence[float], test: Sequence[object]
) -> str | None:
    if not train_same or not train_different:
        return (
            f"its training pairs (both images in other folds) have {len(train_same)} 'same' and "
            f"{len(train_different)} 'different'; fitting a threshold needs at least one of each"
        )
    if not test:
        return "no test pairs: no scored pair has both images in this fold"
    return None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


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
