"""Calibration figures on small hand-made distance lists with known answers; profiles; input checks."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from infra.calibrate import (
    CalibrationInputError,
    LabelledPair,
    ThresholdInUse,
    check_folds,
    cross_validation_renderable,
    describe_images,
    read_pairs,
    save_profile,
    threshold_in_use,
)
from infra.cli import _calibration_dir
from services.scoring.adapters.models import thresholds_from
from services.scoring.calibration import (
    CalibrationProfile,
    CalibrationProfileError,
    ProfileFigures,
    ScoredPair,
    assign_folds,
    best_accuracy,
    calibration_report,
    candidate_thresholds,
    confusion_at,
    cross_validate,
    equal_error_rate,
    identity_groups,
    profile_from_report,
    roc_auc,
    split_fold,
    validate_profile_name,
)
from services.scoring.ports import FaceCandidate, FaceObservation
from services.scoring.scorer import ScoringThresholds
from services.scoring.settings import ScoringSettings

# One same pair (0.7) is farther than one different pair (0.5).
SAME = [0.1, 0.2, 0.3, 0.7]
DIFFERENT = [0.5, 0.8, 0.9, 1.0]
MODEL = "dlib_face_recognition_resnet_model_v1 (HOG, jitters=1)"


def test_auc_is_1_when_every_same_pair_is_closer() -> None:
    assert roc_auc([0.1, 0.2, 0.3], [0.7, 0.8]) == 1.0


def test_auc_is_0_when_every_same_pair_is_farther() -> None:
    assert roc_auc([0.7, 0.8], [0.1, 0.2, 0.3]) == 0.0


def test_auc_counts_a_tie_as_one_half() -> None:
    assert roc_auc([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5
    # (0.2,0.5) 1, (0.2,0.8) 1, (0.5,0.5) 1/2, (0.5,0.8) 1: 3.5 of 4
    assert roc_auc([0.2, 0.5], [0.5, 0.8]) == 0.875


def test_auc_with_one_same_pair_out_of_place() -> None:
    # 0.7 beats 3 of 4 different pairs; the other three same pairs beat all 4: 15 of 16.
    assert roc_auc(SAME, DIFFERENT) == 15 / 16


def test_auc_equals_counting_every_pair_with_ties() -> None:
    rng = random.Random(7)
    same = [round(rng.uniform(0.2, 0.7), 1) for _ in range(40)]
    different = [round(rng.uniform(0.4, 1.0), 1) for _ in range(55)]
    wins = sum(1.0 if s < d else 0.5 if s == d else 0.0 for s in same for d in different)
    assert roc_auc(same, different) == pytest.approx(wins / (len(same) * len(different)), abs=1e-12)


def test_confusion_counts_at_a_threshold() -> None:
    at = confusion_at(SAME, DIFFERENT, 0.6)
    assert (at.true_positives, at.false_negatives, at.false_positives, at.true_negatives) == (3, 1, 1, 3)
    assert at.accuracy == 0.75
    assert at.true_positive_rate == 0.75
    assert at.false_positive_rate == 0.25


def test_a_distance_equal_to_the_threshold_is_not_same() -> None:
    """Like the scorer's verdict: "same" needs distance < threshold."""
    at = confusion_at(SAME, DIFFERENT, 0.5)
    assert at.false_positives == 0
    assert at.true_negatives == 4
    assert confusion_at(SAME, DIFFERENT, 0.3).true_positives == 2


def test_eer_threshold_balances_the_two_error_rates() -> None:
    at = equal_error_rate(SAME, DIFFERENT)
    assert at.threshold == pytest.approx(0.6)  # between 0.5 and 0.7: one miss, one false match
    assert at.false_negative_rate == at.false_positive_rate == 0.25
    report = calibration_report(SAME, DIFFERENT, threshold=0.6, face_model=MODEL, source="pairs.csv")
    assert report.eer == 0.25


def test_eer_with_perfect_separation_is_0_midway_between_the_groups() -> None:
    at = equal_error_rate([0.2, 0.4, 0.45], [0.75, 0.9])
    assert at.threshold == pytest.approx(0.6)
    assert at.accuracy == 1.0


def test_eer_weighs_both_errors_equally_however_unbalanced_the_labels() -> None:
    same = [0.1, 0.2, 0.3, 0.4, 0.65]  # one same pair in five is far
    different = [0.5 + i / 100 for i in range(100)]  # 0.50 .. 1.49
    at = equal_error_rate(same, different)
    assert at.false_negative_rate == pytest.approx(0.2)
    # FPR 0.15 is the closest to FNR 0.2 (one more step: FNR 0 and FPR 0.16, 0.16 apart).
    assert at.false_positive_rate == pytest.approx(0.15)
    best = best_accuracy(same, different)
    assert best.threshold == pytest.approx(0.45)  # more pairs right by giving up the far same pair
    assert best.accuracy == pytest.approx(104 / 105)


def test_best_accuracy_threshold_and_its_tie_break() -> None:
    best = best_accuracy(SAME, DIFFERENT)
    # 0.4 and 0.75 both get 7 of 8 right; the lower one calls fewer pairs "same".
    assert best.threshold == pytest.approx(0.4)
    assert best.accuracy == 0.875


def test_candidate_thresholds_cover_every_outcome() -> None:
    candidates = candidate_thresholds([0.2, 0.4], [0.4, 0.6])
    assert candidates[0] == 0.2
    assert candidates[1:3] == pytest.approx([0.3, 0.5])
    assert 0.6 < candidates[-1] < 0.6000001
    assert [confusion_at([0.2, 0.4], [0.4, 0.6], t).true_positives for t in candidates] == [0, 1, 2, 2]


@pytest.mark.parametrize(("same", "different"), [([], [0.5]), ([0.5], []), ([0.1, float("nan")], [0.5])])
def test_metrics_refuse_missing_labels_and_non_finite_distances(same: list[float], different: list[float]) -> None:
    with pytest.raises(ValueError, match=r"at least one|finite"):
        roc_auc(same, different)


def test_report_counts_and_lists_pairs_without_a_face() -> None:
    report = calibration_report(
        SAME,
        DIFFERENT,
        threshold=0.6,
        face_model=MODEL,
        source="pairs.csv",
        no_face_pairs=[("a.jpg", "gray.png")],
        no_face_images=["gray.png"],
    )
    assert report.pairs_in_file == 9
    assert (report.same_pairs, report.different_pairs) == (4, 4)
    assert report.no_face_pairs == (("a.jpg", "gray.png"),)
    assert report.in_use.threshold == 0.6
    assert report.at_best_accuracy.threshold == pytest.approx(0.4)


def report() -> CalibrationProfile:
    return profile_from_report(
        calibration_report(SAME, DIFFERENT, threshold=0.6, face_model=MODEL, source="pairs.csv"),
        name="studio-2026_11",
        created_at=datetime(2026, 11, 24, 9, 30, 15, 123456, tzinfo=UTC),
    )


def test_profile_saves_the_eer_threshold_without_a_band() -> None:
    profile = report()
    assert profile.face_same_below == profile.face_uncertain_below == pytest.approx(0.6)
    assert profile.face_model == MODEL
    assert profile.figures == ProfileFigures(
        source="pairs.csv",
        pairs=8,
        same_pairs=4,
        different_pairs=4,
        no_face_pairs=0,
        auc=15 / 16,
        eer=0.25,
        threshold=profile.face_same_below,
        accuracy=0.75,
    )


def test_profile_json_round_trip_is_exact() -> None:
    profile = report()
    again = CalibrationProfile.from_json(profile.to_json())
    assert again == profile
    assert again.created_at.tzinfo is not None


def test_uncertain_band_is_centred_on_the_eer_threshold() -> None:
    base = calibration_report(SAME, DIFFERENT, threshold=0.6, face_model=MODEL, source="pairs.csv")
    profile = profile_from_report(base, name="banded", created_at=datetime.now(UTC), uncertain_band=0.1)
    assert profile.face_same_below == pytest.approx(0.55)
    assert profile.face_uncertain_below == pytest.approx(0.65)
    with pytest.raises(ValueError, match="narrower band"):
        profile_from_report(base, name="banded", created_at=datetime.now(UTC), uncertain_band=1.5)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "something.else"}',
        report().to_json().replace('"face_same_below": 0.6', '"face_same_below": 0.9'),  # above uncertain_below
        report().to_json().replace('"name": "studio-2026_11"', '"name": "../etc"'),
        report().to_json().replace('"figures": {', '"figures": {"extra": 1, '),
    ],
)
def test_anything_but_a_profile_is_refused_with_advice(text: str) -> None:
    with pytest.raises(CalibrationProfileError, match="likeness calibrate"):
        CalibrationProfile.from_json(text)


def test_profile_refuses_thresholds_for_another_face_model() -> None:
    profile = report()
    assert profile.thresholds_for(MODEL) == ScoringThresholds(profile.face_same_below, profile.face_uncertain_below)
    with pytest.raises(CalibrationProfileError, match=r"jitters=10.*not comparable"):
        profile.thresholds_for(MODEL.replace("jitters=1", "jitters=10"))


@pytest.mark.parametrize("name", ["default", "dlib-2026-11", "a_b", "x" * 64])
def test_profile_names_that_are_allowed(name: str) -> None:
    assert validate_profile_name(name) == name


@pytest.mark.parametrize("name", ["", "Studio", "../etc", "a/b", "a.json", "has space", "x" * 65, "ümlaut"])
def test_profile_names_that_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"a-z, 0-9"):
        validate_profile_name(name)


def test_saved_profile_file_is_named_after_the_profile(tmp_path: Path) -> None:
    profile = report()
    path = save_profile(profile, tmp_path / "calibration")
    assert path == tmp_path / "calibration" / "studio-2026_11.json"
    assert CalibrationProfile.from_json(path.read_text()) == profile
    assert [p.name for p in path.parent.iterdir()] == ["studio-2026_11.json"]


def test_calibration_dir_defaults_to_the_project_and_can_be_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIKENESS_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.delenv("LIKENESS_CALIBRATION_DIR", raising=False)
    monkeypatch.setenv("LIKENESS_DATA_DIR", str(tmp_path / "stack"))  # the stack's folder is not the place
    assert _calibration_dir() == tmp_path / "project" / ".likeness" / "calibration"
    monkeypatch.setenv("LIKENESS_CALIBRATION_DIR", str(tmp_path / "profiles"))
    assert _calibration_dir() == tmp_path / "profiles"


# The scoring service's wiring: a profile replaces the two threshold settings.


def test_scoring_thresholds_come_from_the_profile_when_set(tmp_path: Path) -> None:
    profile = replace(report(), face_same_below=0.5, face_uncertain_below=0.55)
    path = save_profile(profile, tmp_path)
    settings = ScoringSettings(calibration_profile=path, face_same_below=0.3, face_uncertain_below=0.3)
    assert thresholds_from(settings, face_model=MODEL) == (ScoringThresholds(0.5, 0.55), "studio-2026_11")
    assert thresholds_from(ScoringSettings(), face_model=MODEL) == (ScoringThresholds(0.6, 0.6), None)


def test_clip_thresholds_come_from_the_settings_with_or_without_a_profile(tmp_path: Path) -> None:
    path = save_profile(replace(report(), face_same_below=0.5, face_uncertain_below=0.55), tmp_path)
    with_profile, _ = thresholds_from(
        ScoringSettings(calibration_profile=path, clip_same_above=0.9, clip_uncertain_above=0.8), face_model=MODEL
    )
    without, _ = thresholds_from(ScoringSettings(clip_same_above=0.9, clip_uncertain_above=0.8), face_model=MODEL)

    assert with_profile == ScoringThresholds(0.5, 0.55, clip_same_above=0.9, clip_uncertain_above=0.8)
    assert without == ScoringThresholds(0.6, 0.6, clip_same_above=0.9, clip_uncertain_above=0.8)


def test_scoring_refuses_a_missing_profile_or_one_for_another_model(tmp_path: Path) -> None:
    missing = ScoringSettings(calibration_profile=tmp_path / "nope.json")
    with pytest.raises(CalibrationProfileError, match=r"nope\.json cannot be read"):
        thresholds_from(missing, face_model=MODEL)
    path = save_profile(report(), tmp_path)
    with pytest.raises(CalibrationProfileError, match="not comparable"):
        thresholds_from(ScoringSettings(calibration_profile=path), face_model="another model")


def test_threshold_in_use_is_the_option_then_the_profile_then_the_setting(tmp_path: Path) -> None:
    path = save_profile(replace(report(), face_same_below=0.5, face_uncertain_below=0.5), tmp_path)
    assert threshold_in_use(ScoringSettings(face_same_below=0.55), MODEL, None).value == 0.55
    with_profile = threshold_in_use(ScoringSettings(calibration_profile=path), MODEL, None)
    assert (with_profile.value, with_profile.source) == (0.5, "profile 'studio-2026_11'")
    assert threshold_in_use(ScoringSettings(calibration_profile=path), MODEL, 0.7).value == 0.7
    with pytest.raises(CalibrationInputError, match="above 0"):
        threshold_in_use(ScoringSettings(), MODEL, 0.0)


# Reading the pairs file: each mistake gets a message that says what to fix.


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "people").mkdir(parents=True)
    for name in ("a.png", "b.png", "people/c.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    return folder


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    return path


def test_reads_labelled_pairs(tmp_path: Path, images_dir: Path) -> None:
    pairs_csv = write_csv(tmp_path, "image_a,image_b,label\na.png,b.png,same\n\na.png, people/c.png ,different\n")
    pairs = read_pairs(pairs_csv, images_dir)
    assert [(p.image_a, p.image_b, p.same) for p in pairs] == [
        ("a.png", "b.png", True),
        ("a.png", "people/c.png", False),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"first line must be the header `image_a,image_b,label`; found `an empty file`"),
        ("a,b,label\na.png,b.png,same\n", r"must be the header .*found `a,b,label`"),
        ("image_a,image_b,label\n", "no pairs"),
        ("image_a,image_b,label\na.png,b.png,Same\n", r"line 2: unknown label 'Same'; use `same` or `different`"),
        ("image_a,image_b,label\na.png,b.png,same\na.png,b.png\n", r"line 3: expected 3 fields"),
        ("image_a,image_b,label\na.png,,same\n", r"line 2: an image path is empty"),
        ("image_a,image_b,label\na.png,missing.png,same\n", r"1 image\(s\) .* not in .*: missing.png.*relative to"),
    ],
)
def test_bad_pairs_files_are_refused(tmp_path: Path, images_dir: Path, text: str, message: str) -> None:
    with pytest.raises(CalibrationInputError, match=message):
        read_pairs(write_csv(tmp_path, text), images_dir)


def test_missing_pairs_file_or_images_folder(tmp_path: Path, images_dir: Path) -> None:
    with pytest.raises(CalibrationInputError, match=r"nope\.csv not found: pass --pairs"):
        read_pairs(tmp_path / "nope.csv", images_dir)
    pairs_csv = write_csv(tmp_path, "image_a,image_b,label\na.png,b.png,same\n")
    with pytest.raises(CalibrationInputError, match="pass --images"):
        read_pairs(pairs_csv, tmp_path / "no-such-folder")


class OneFaceEverywhere:
    """A FaceEmbedder that sees the same face in every image it is given."""

    model_name = "fake face model"

    def observe(self, image: Image.Image, *, max_candidates: int = 1) -> FaceObservation:
        face = FaceCandidate(descriptor=np.zeros(128, dtype=np.float32), box=(0, 0, 1, 1), detector_score=1.0)
        return FaceObservation(faces_found=1, candidates=(face,))


def test_an_image_that_cannot_be_read_is_named(images_dir: Path) -> None:
    (images_dir / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    quiet = Console(quiet=True)
    assert describe_images(["a.png"], images_dir, OneFaceEverywhere(), quiet)["a.png"] is not None
    with pytest.raises(CalibrationInputError, match=r"cannot read image .*broken\.jpg.*remove its pairs"):
        describe_images(["a.png", "broken.jpg"], images_dir, OneFaceEverywhere(), quiet)


# Identity-disjoint cross-validation on hand-made people and distances.


def people_pairs(distance: dict[str, float], across: float) -> list[ScoredPair]:
    """Every pair among people p1..p4 with three photos each: "same" at distance[person], else `across`.

    `distance` may also give a distance for "different" pairs between two people, keyed "p1-p3".
    """
    images = [f"{person}/{n}.jpg" for person in ("p1", "p2", "p3", "p4") for n in (1, 2, 3)]
    pairs = []
    for i, a in enumerate(images):
        for b in images[i + 1 :]:
            pa, pb = a.split("/")[0], b.split("/")[0]
            if pa == pb:
                pairs.append(ScoredPair(a, b, True, distance[pa]))
            else:
                pairs.append(ScoredPair(a, b, False, distance.get(f"{pa}-{pb}", across)))
    return pairs


# p4's own photos are far apart (0.7); p1 and p3 look alike (0.75 between them).
HARD = people_pairs({"p1": 0.3, "p2": 0.35, "p3": 0.4, "p4": 0.7, "p1-p3": 0.75}, across=0.9)


def test_identity_groups_are_the_connected_components_of_the_same_pairs() -> None:
    pairs = [
        LabelledPair("b/2.jpg", "b/1.jpg", True),
        LabelledPair("a/3.jpg", "a/2.jpg", True),
        LabelledPair("a/1.jpg", "a/2.jpg", True),  # a/1 joins a/3 through a/2
        LabelledPair("a/1.jpg", "b/1.jpg", False),
        LabelledPair("z.jpg", "a/1.jpg", False),  # only ever "different": a group of its own
        LabelledPair("c.jpg", "z.jpg", False),
    ]
    assert identity_groups(pairs) == (
        ("a/1.jpg", "a/2.jpg", "a/3.jpg"),
        ("b/1.jpg", "b/2.jpg"),
        ("c.jpg",),
        ("z.jpg",),
    )


def test_a_same_pair_with_no_face_still_joins_its_images() -> None:
    pairs = [ScoredPair("a.jpg", "gray.png", True, None), ScoredPair("gray.png", "b.jpg", True, 0.2)]
    assert identity_groups(pairs) == (("a.jpg", "b.jpg", "gray.png"),)


def test_folds_keep_each_person_whole_and_balance_images() -> None:
    pairs = [
        *people_pairs({"p1": 0.3, "p2": 0.3, "p3": 0.3, "p4": 0.3}, across=0.9),
        ScoredPair("solo.jpg", "p1/1.jpg", False, 0.9),
    ]
    fold_of = assign_folds(pairs, 2)
    for group in identity_groups(pairs):
        assert len({fold_of[image] for image in group}) == 1
    # Largest first, ties by smallest path, each to the fold with fewest images: p1, p2, p3, p4, solo.
    by_fold = {fold: sorted({image.split("/")[0] for image, f in fold_of.items() if f == fold}) for fold in (0, 1)}
    assert by_fold == {0: ["p1", "p3", "solo.jpg"], 1: ["p2", "p4"]}


def test_folds_do_not_depend_on_the_order_of_the_pairs() -> None:
    shuffled = list(HARD)
    random.Random(3).shuffle(shuffled)
    assert assign_folds(shuffled, 3) == assign_folds(HARD, 3)
    assert sorted(set(assign_folds(HARD, 4).values())) == [0, 1, 2, 3]  # no empty fold


@pytest.mark.parametrize(("folds", "message"), [(1, "at least 2 folds"), (5, r"4 identity group\(s\).*5 folds")])
def test_folds_must_be_2_to_the_number_of_groups(folds: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign_folds(HARD, folds)
    with pytest.raises(ValueError, match=message):
        cross_validate(HARD, folds, fixed_threshold=0.6)


def test_too_many_folds_is_an_input_error_that_says_what_to_fix() -> None:
    with pytest.raises(CalibrationInputError, match=r"--folds 5: in pairs.csv, .*To fix: choose --folds from 2 to 4"):
        check_folds(HARD, 5, Path("pairs.csv"))
    one_person = [LabelledPair("a.jpg", "b.jpg", True)]
    with pytest.raises(CalibrationInputError, match="add pairs with other people"):
        check_folds(one_person, 2, Path("pairs.csv"))
    check_folds(HARD, 4, Path("pairs.csv"))  # one person per fold is allowed


def test_no_test_image_is_ever_in_its_folds_training_pairs() -> None:
    pairs = [*HARD, ScoredPair("p1/1.jpg", "p2/1.jpg", False, None)]  # not scored: goes nowhere
    for folds in (2, 3, 4):
        fold_of = assign_folds(pairs, folds)
        for fold in range(folds):
            split = split_fold(pairs, fold_of, fold)
            tested = {image for pair in split.test for image in (pair.image_a, pair.image_b)}
            trained = {image for pair in split.training for image in (pair.image_a, pair.image_b)}
            assert tested
            assert not tested & trained
            assert {fold_of[image] for image in tested} == {fold}
            for pair in split.left_out:  # straddles: one image in the fold, one outside
                assert sorted([fold_of[pair.image_a] == fold, fold_of[pair.image_b] == fold]) == [False, True]
            assert len(split.training) + len(split.test) + len(split.left_out) == len(HARD)


def test_a_pair_straddling_two_folds_is_neither_trained_nor_tested_on() -> None:
    straddling = ScoredPair("p1/1.jpg", "p2/1.jpg", False, 0.9)
    fold_of = assign_folds(HARD, 2)
    assert fold_of["p1/1.jpg"] != fold_of["p2/1.jpg"]
    for fold in (0, 1):
        split = split_fold(HARD, fold_of, fold)
        assert straddling in split.left_out
        assert straddling not in split.training
        assert straddling not in split.test
    assert cross_validate(HARD, 2, fixed_threshold=0.6).across_folds == 4 * 9  # p1 or p3 with p2 or p4


def test_each_fold_fits_on_the_other_people_and_is_judged_on_its_own() -> None:
    cv = cross_validate(HARD, 2, fixed_threshold=0.6)
    first, second = cv.folds
    # Fold 1 holds p1 and p3; it trains on p2 (same 0.35) and p4 (same 0.7) against 0.9 between them.
    assert (first.groups, first.images) == (2, 6)
    assert (first.training_same, first.training_different, first.test_same, first.test_different) == (6, 9, 6, 9)
    assert first.threshold == pytest.approx(0.8)
    assert first.held_out is not None
    # ... so it calls p1 and p3 (0.75 apart) the same person: 9 false matches among 15 pairs.
    assert (first.held_out.true_positives, first.held_out.false_positives, first.held_out.right) == (6, 9, 6)
    assert first.held_out.false_positive_rate == 1.0
    # Fold 2 trains on p1 and p3 (same below 0.4, different at 0.75) and misses p4's far photos.
    assert second.threshold == pytest.approx(0.575)
    assert second.held_out is not None
    assert (second.held_out.true_positives, second.held_out.false_negatives, second.held_out.right) == (3, 3, 12)
    assert second.held_out.true_positive_rate == 0.5
    # Pooled: right calls over all test pairs; the fixed 0.6 judged on the very same pairs.
    assert (cv.held_out.right, cv.held_out.pairs, cv.held_out.accuracy) == (18, 30, 0.6)
    assert (cv.at_fixed.right, cv.at_fixed.pairs, cv.at_fixed.accuracy) == (27, 30, 0.9)
    assert (cv.groups, cv.evaluated, cv.not_scored) == (4, 2, 0)


def test_folds_that_cannot_be_evaluated_are_reported_not_raised() -> None:
    pairs = [
        ScoredPair("p/1.jpg", "p/2.jpg", True, 0.3),
        ScoredPair("p/1.jpg", "s.jpg", False, 0.9),
        ScoredPair("p/2.jpg", "t.jpg", False, 0.8),
        ScoredPair("s.jpg", "t.jpg", False, 0.85),
    ]
    cv = cross_validate(pairs, 3, fixed_threshold=0.6)
    # p is fold 1 (2 images); s and t, alone, are folds 2 and 3.
    assert [f.not_evaluated is None for f in cv.folds] == [False, False, False]
    assert cv.folds[0].not_evaluated is not None
    assert "have 0 'same' and 1 'different'" in cv.folds[0].not_evaluated
    assert cv.folds[1].not_evaluated == "no test pairs: no scored pair has both images in this fold"
    assert all(f.threshold is None and f.held_out is None and f.at_fixed is None for f in cv.folds)
    assert (cv.held_out.pairs, cv.held_out.accuracy, cv.evaluated) == (0, None, 0)
    console = Console(record=True, width=200)
    console.print(cross_validation_renderable(cv, ThresholdInUse(0.6, "setting face_same_below"), "pairs.csv"))
    text = " ".join(console.export_text().split())
    assert "No fold could be evaluated, so there is no held-out accuracy." in text
    assert "Fold 2 not evaluated: no test pairs" in text
    assert text.count("not evaluated") == 6  # three table rows and three explanations


def test_a_test_set_with_one_label_has_no_rate_for_the_other() -> None:
    cv = cross_validate(HARD, 4, fixed_threshold=0.6)  # one person per fold: only "same" test pairs
    assert all(f.test_different == 0 and f.held_out is not None for f in cv.folds)
    assert all(f.held_out.false_positive_rate is None for f in cv.folds if f.held_out is not None)
    assert (cv.held_out.pairs, cv.held_out.right) == (12, 9)  # p4's 3 far pairs are missed
    console = Console(record=True, width=200)
    console.print(cross_validation_renderable(cv, ThresholdInUse(0.6, "setting face_same_below"), "pairs.csv"))
    text = " ".join(console.export_text().split())
    assert "n/a" in text
    assert "Pooled held-out accuracy 0.7500 (9/12) over the test pairs of 4 of 4 folds" in text
    assert "the fixed threshold in use (setting face_same_below) 0.6000 gets 0.7500 (9/12)" in text
