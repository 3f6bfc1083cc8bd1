"""The scorer's rules with fake models: verdicts, distances, CLIP similarity, batching, caching."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from contracts import ClipScore, ShotScore
from services.scoring.ports import FaceCandidate, FaceObservation
from services.scoring.scorer import (
    SCORER_VERSION,
    ReferenceEmbeddings,
    Scorer,
    ScoringThresholds,
    ShotToScore,
    StaleReferenceEmbeddings,
    clip_verdict,
    cosine_similarity,
    face_verdict,
    scorer_key,
)
from tests.fakes import FakeFaceEmbedder, FakeImageEmbedder, FakeTextEmbedder, swatch

# Descriptors on one axis, so distances are easy to read: |a - b|.
REFERENCE = [0.0, 0.0]
BAND = ScoringThresholds(face_same_below=0.5, face_uncertain_below=0.75)  # exact in float32


def scorer_with(
    reference_descriptors: list[list[float] | None],
    *,
    thresholds: ScoringThresholds = BAND,
    calibrated: bool = False,
) -> tuple[Scorer, FakeFaceEmbedder, FakeImageEmbedder, ReferenceEmbeddings]:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder(calibrated=calibrated)
    references = []
    for seed, descriptor in enumerate(reference_descriptors, start=1000):
        image = swatch(seed)
        face.register(image, descriptor)
        references.append(image)
    scorer = Scorer(face, images, thresholds)
    return scorer, face, images, scorer.embed_references(references)


def shot_at(face: FakeFaceEmbedder, x: float, seed: int = 1) -> Image.Image:
    image = swatch(seed)
    face.register(image, [x, 0.0])
    return image


@pytest.mark.parametrize(
    ("x", "verdict"),
    [
        (0.0, "same"),
        (0.3, "same"),
        (0.5, "uncertain"),  # same_below is exclusive
        (0.74, "uncertain"),
        (0.75, "different"),  # uncertain_below is exclusive
        (1.2, "different"),
    ],
)
def test_verdict_follows_distance_to_reference_face(x: float, verdict: str) -> None:
    scorer, face, _, references = scorer_with([REFERENCE])
    image = swatch(1)
    face.register(image, [x, 0.0])

    score = scorer.score(image, references)

    assert score.verdict == verdict
    assert score.face is not None
    assert score.face.distance == pytest.approx(x, abs=1e-6)
    assert score.face.same_below == 0.5


def test_default_thresholds_have_no_uncertain_band() -> None:
    scorer, face, _, references = scorer_with([REFERENCE], thresholds=ScoringThresholds())
    below, at = swatch(1), swatch(2)
    face.register(below, [0.59, 0.0])
    face.register(at, [0.6, 0.0])

    scores = scorer.score_batch([ShotToScore(below, references), ShotToScore(at, references)])

    assert [s.verdict for s in scores] == ["same", "different"]


def test_distance_is_to_the_nearest_reference_and_mean_over_all() -> None:
    scorer, face, _, references = scorer_with([[0.2, 0.0], [1.0, 0.0]])
    image = swatch(1)
    face.register(image, [0.0, 0.0])

    score = scorer.score(image, references)

    assert score.face is not None
    assert score.face.distance == pytest.approx(0.2, abs=1e-6)
    assert score.face.mean_distance == pytest.approx(0.6, abs=1e-6)
    assert score.verdict == "same"


def test_references_without_a_face_count_for_clip_only() -> None:
    scorer, face, _, references = scorer_with([None, [0.9, 0.0], None])
    image = swatch(1)
    face.register(image, [0.0, 0.0])

    score = scorer.score(image, references)

    assert len(references.face_descriptors) == 1
    assert score.face is not None
    assert score.face.distance == pytest.approx(0.9, abs=1e-6)
    assert score.verdict == "different"


def test_shot_without_a_face_is_no_face() -> None:
    scorer, _, _, references = scorer_with([REFERENCE])

    score = scorer.score(swatch(1), references)  # nothing registered: no face

    assert score.verdict == "no_face"
    assert score.face is not None
    assert score.face.faces_found == 0
    assert score.face.distance is None
    assert score.face.mean_distance is None
    assert score.face.max_distance is None
    assert score.face.centroid_distance is None
    assert score.face.candidates == 0
    assert score.basis == "face"
    assert score.reason == "no face found in the shot, though the references show one"


def test_references_without_any_face_give_an_uncertain_clip_verdict_when_clip_is_uncalibrated() -> None:
    scorer, face, _, references = scorer_with([None, None])
    observed_before = face.observed

    score = scorer.score(shot_at(face, 0.0), references)

    assert score.verdict == "uncertain"
    assert score.basis == "clip_image"
    assert score.face is None
    assert "no face in the references" in score.reason
    assert "random weights" in score.reason
    assert face.observed == observed_before  # the shot's face is not even looked for


def test_faces_found_is_reported() -> None:
    scorer, face, _, references = scorer_with([REFERENCE])
    crowd = swatch(1)
    face.register(crowd, [0.1, 0.0], faces_found=3)

    score = scorer.score(crowd, references)

    assert score.face is not None
    assert score.face.faces_found == 3
    assert score.face.model == "fake-face-v1"


def test_clip_similarity_is_cosine_to_normalised_reference_mean() -> None:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder()
    first, second, shot = swatch(1), swatch(2), swatch(3)
    images.register(first, [1.0, 0.0, 0.0, 0.0])
    images.register(second, [0.0, 1.0, 0.0, 0.0])
    images.register(shot, [1.0, 0.0, 0.0, 0.0])
    scorer = Scorer(face, images)

    references = scorer.embed_references([first, second])
    score = scorer.score(shot, references)

    np.testing.assert_allclose(references.clip_mean, [0.5, 0.5, 0.0, 0.0])
    assert score.clip.image_similarity == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert score.clip.calibrated is False
    assert score.clip.model == "fake-clip-v1"


@pytest.mark.parametrize("calibrated", [False, True])
def test_clip_never_changes_the_verdict(calibrated: bool) -> None:
    scorer, face, images, references = scorer_with([REFERENCE], calibrated=calibrated)
    same_face_opposite_image = shot_at(face, 0.1)
    images.register(same_face_opposite_image, [-1.0, 0.0, 0.0, 0.0])

    score = scorer.score(same_face_opposite_image, references)

    assert score.clip.image_similarity == pytest.approx(-1.0)
    assert score.clip.calibrated is calibrated
    assert score.verdict == "same"
    assert score.basis == "face"


def test_score_batch_embeds_all_shots_in_one_clip_call_and_keeps_order() -> None:
    scorer, face, images, references = scorer_with([REFERENCE])
    shots = [swatch(1), swatch(2), swatch(3)]
    face.register(shots[0], [0.9, 0.0])
    face.register(shots[2], [0.1, 0.0])
    images.batches.clear()

    scores = scorer.score_batch([ShotToScore(shot, references) for shot in shots])

    assert images.batches == [3]
    assert [s.verdict for s in scores] == ["different", "no_face", "same"]
    assert all(s.scorer_version == SCORER_VERSION == "scoring-2" for s in scores)
    assert all(s.scorer_key == scorer.key for s in scores)
    assert all(s.scoring_ms >= 0.0 for s in scores)
    assert scorer.score_batch([]) == []


def test_embed_references_needs_at_least_one_image() -> None:
    scorer = Scorer(FakeFaceEmbedder(), FakeImageEmbedder())

    with pytest.raises(ValueError, match="at least one reference"):
        scorer.embed_references([])


def test_references_made_by_other_models_are_refused() -> None:
    scorer, _, _, references = scorer_with([REFERENCE])
    upgraded = Scorer(FakeFaceEmbedder(), FakeImageEmbedder(model_name="fake-clip-v2"))

    assert scorer.is_current(references)
    assert not upgraded.is_current(references)
    assert upgraded.embedding_version != scorer.embedding_version
    assert scorer.embedding_version == "scoring-2; fake-face-v1; fake-clip-v1"
    with pytest.raises(StaleReferenceEmbeddings, match="embed the references again"):
        upgraded.score(swatch(1), references)
    fresh = upgraded.embed_references([swatch(1000)])
    with pytest.raises(StaleReferenceEmbeddings):  # one stale set in a batch refuses the batch
        upgraded.score_batch([ShotToScore(swatch(1), fresh), ShotToScore(swatch(2), references)])


@pytest.mark.parametrize(("same", "uncertain"), [(0.0, 0.6), (0.7, 0.6), (-0.1, 0.5)])
def test_thresholds_must_be_ordered_and_positive(same: float, uncertain: float) -> None:
    with pytest.raises(ValueError, match="face_same_below"):
        ScoringThresholds(face_same_below=same, face_uncertain_below=uncertain)


@pytest.mark.parametrize(("same", "uncertain"), [(0.7, 0.8), (1.1, 0.5), (0.5, -1.1)])
def test_clip_thresholds_must_be_ordered_and_within_cosine_range(same: float, uncertain: float) -> None:
    with pytest.raises(ValueError, match="clip_uncertain_above"):
        ScoringThresholds(clip_same_above=same, clip_uncertain_above=uncertain)


CANDIDATE = FaceCandidate(descriptor=np.zeros(128, np.float32), box=(0, 0, 1, 1), detector_score=1.0)


@pytest.mark.parametrize(
    ("faces_found", "candidates"),
    [(1, ()), (0, (CANDIDATE,)), (1, (CANDIDATE, CANDIDATE)), (-1, ())],
    ids=["a face but no candidate", "a candidate but no face", "more candidates than faces", "negative count"],
)
def test_face_observation_refuses_inconsistent_fields(faces_found: int, candidates: tuple[FaceCandidate, ...]) -> None:
    with pytest.raises(ValueError, match="faces_found"):
        FaceObservation(faces_found=faces_found, candidates=candidates)


def test_face_observation_primary_face_is_the_first_candidate() -> None:
    second = FaceCandidate(descriptor=np.ones(128, np.float32), box=(5, 5, 9, 9), detector_score=2.0)

    observation = FaceObservation(faces_found=3, candidates=(CANDIDATE, second))

    assert observation.descriptor is CANDIDATE.descriptor
    assert observation.box == (0, 0, 1, 1)
    assert FaceObservation(faces_found=0).descriptor is None
    assert FaceObservation(faces_found=0).box is None


def test_face_verdict_without_distance_is_no_face() -> None:
    assert face_verdict(None, ScoringThresholds()) == "no_face"


def test_cosine_similarity_is_clamped_and_zero_for_zero_vectors() -> None:
    v = np.array([1e-3, 2e-3], dtype=np.float32)
    assert -1.0 <= cosine_similarity(v, -v) <= 1.0
    assert cosine_similarity(v, v * 7) == pytest.approx(1.0)
    assert cosine_similarity(v, np.zeros(2, dtype=np.float32)) == 0.0


def test_reference_embeddings_round_trip_exactly() -> None:
    rng = np.random.default_rng(7)
    original = ReferenceEmbeddings(
        face_descriptors=[rng.standard_normal(128).astype(np.float32) for _ in range(3)],
        clip_mean=rng.standard_normal(512).astype(np.float32),
        face_model="dlib x",
        image_model="open_clip ViT-B-32 (random weights, uncalibrated)",
    )

    copy = ReferenceEmbeddings.from_bytes(original.to_bytes())

    assert copy == original
    assert all(
        a.tobytes() == b.tobytes() for a, b in zip(copy.face_descriptors, original.face_descriptors, strict=True)
    )
    assert copy.clip_mean.dtype == np.float32


def test_reference_embeddings_without_faces_round_trip() -> None:
    original = ReferenceEmbeddings(
        face_descriptors=[], clip_mean=np.ones(4, dtype=np.float32), face_model="f", image_model="i"
    )

    assert ReferenceEmbeddings.from_bytes(original.to_bytes()) == original


def test_reference_embeddings_equality_sees_a_one_ulp_change() -> None:
    descriptor = np.linspace(-1, 1, 128, dtype=np.float32)
    nudged = descriptor.copy()
    nudged[5] = np.nextafter(nudged[5], np.float32(2))
    mean = np.zeros(4, dtype=np.float32)

    a = ReferenceEmbeddings(face_descriptors=[descriptor], clip_mean=mean, face_model="f", image_model="i")
    b = ReferenceEmbeddings(face_descriptors=[nudged], clip_mean=mean, face_model="f", image_model="i")

    assert a != b


@pytest.mark.parametrize("blob", [b"", b"not an npz", b"PK\x03\x04garbage"])
def test_reference_embeddings_reject_foreign_bytes(blob: bytes) -> None:
    with pytest.raises(ValueError, match="reference-embeddings"):
        ReferenceEmbeddings.from_bytes(blob)


# --- scoring-2: several faces in a shot, the distances beside the best match, the reason -------


def test_of_two_faces_in_a_shot_the_one_closest_to_the_references_is_chosen() -> None:
    scorer, face, _, references = scorer_with([REFERENCE])
    crowd = swatch(1)
    face.register(crowd, candidates=[[0.9, 0.0], [0.1, 0.0]])  # the larger, primary face is someone else

    score = scorer.score(crowd, references)

    assert face.max_candidates_asked[-1] == 5  # the default max_face_candidates
    assert score.face is not None
    assert (score.face.faces_found, score.face.candidates) == (2, 2)
    assert score.face.notes == ["several_candidates"]
    assert score.face.distance == pytest.approx(0.1, abs=1e-6)
    assert score.face.centroid_distance == pytest.approx(0.1, abs=1e-6)  # the chosen face's, not the primary's
    assert score.verdict == "same"
    assert score.basis == "face"
    assert "(the closest of 2 faces)" in score.reason


def test_the_closest_face_is_chosen_against_several_reference_faces() -> None:
    scorer, face, _, references = scorer_with([[0.0, 0.0], [0.3, 0.0]])
    crowd = swatch(1)
    face.register(crowd, candidates=[[0.9, 0.0], [0.1, 0.0]])

    score = scorer.score(crowd, references)

    assert score.face is not None
    assert score.face.distance == pytest.approx(0.1, abs=1e-6)
    assert score.face.mean_distance == pytest.approx(0.15, abs=1e-6)
    assert score.face.max_distance == pytest.approx(0.2, abs=1e-6)
    assert score.face.centroid_distance == pytest.approx(0.05, abs=1e-6)
    assert score.verdict == "same"


def test_when_the_primary_face_is_closest_the_other_faces_still_count_as_candidates() -> None:
    scorer, face, _, references = scorer_with([[0.0, 0.0], [0.3, 0.0]])
    crowd = swatch(1)
    face.register(crowd, candidates=[[0.1, 0.0], [0.9, 0.0], [1.5, 0.0]], faces_found=4)

    score = scorer.score(crowd, references)

    assert score.face is not None
    assert (score.face.faces_found, score.face.candidates) == (4, 3)
    assert score.face.distance == pytest.approx(0.1, abs=1e-6)
    assert score.face.notes == ["several_candidates"]


def test_max_face_candidates_limits_the_faces_compared() -> None:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder()
    reference = swatch(1000)
    face.register(reference, REFERENCE)
    scorer = Scorer(face, images, BAND, max_face_candidates=1)
    references = scorer.embed_references([reference])
    crowd = swatch(1)
    face.register(crowd, candidates=[[0.9, 0.0], [0.1, 0.0]])

    score = scorer.score(crowd, references)

    assert face.max_candidates_asked[-1] == 1
    assert score.face is not None
    assert (score.face.faces_found, score.face.candidates) == (2, 1)
    assert score.face.notes == []
    assert score.face.distance == pytest.approx(0.9, abs=1e-6)
    assert score.verdict == "different"
    with pytest.raises(ValueError, match="max_face_candidates"):
        Scorer(face, images, max_face_candidates=0)


def test_references_are_described_by_their_primary_face_only() -> None:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder()
    group = swatch(1000)
    face.register(group, candidates=[[0.0, 0.0], [5.0, 0.0]])
    scorer = Scorer(face, images, BAND)

    references = scorer.embed_references([group])

    assert len(references.face_descriptors) == 1
    np.testing.assert_array_equal(references.face_descriptors[0], [0.0, 0.0])


def test_the_embedders_notes_are_kept() -> None:
    scorer, face, _, references = scorer_with([REFERENCE])
    small, small_pair = swatch(1), swatch(2)
    face.register(small, [0.2, 0.0], notes=["upsampled"])
    face.register(small_pair, candidates=[[0.2, 0.0], [0.7, 0.0]], notes=["upsampled", "contrast_stretched"])

    alone, pair = scorer.score_batch([ShotToScore(small, references), ShotToScore(small_pair, references)])

    assert alone.face is not None
    assert alone.face.notes == ["upsampled"]
    assert pair.face is not None
    assert pair.face.notes == ["upsampled", "contrast_stretched", "several_candidates"]


def test_min_mean_max_and_centroid_distances() -> None:
    scorer, face, _, references = scorer_with([[0.2, 0.0], [1.0, 0.0], [0.0, 0.6]])
    image = swatch(1)
    face.register(image, [0.0, 0.0])

    score = scorer.score(image, references)

    assert score.face is not None
    assert score.face.references_with_face == 3
    assert score.face.distance == pytest.approx(0.2, abs=1e-6)
    assert score.face.mean_distance == pytest.approx(0.6, abs=1e-6)
    assert score.face.max_distance == pytest.approx(1.0, abs=1e-6)
    # the centroid of the three reference faces is (0.4, 0.2)
    assert score.face.centroid_distance == pytest.approx(math.sqrt(0.2), abs=1e-6)
    assert (score.face.same_below, score.face.uncertain_below) == (0.5, 0.75)


@pytest.mark.parametrize(
    ("x", "verdict", "rule"),
    [
        (0.1, "same", "under 0.50: same"),
        (0.6, "uncertain", "between 0.50 and 0.75: uncertain"),
        (0.9, "different", "at or over 0.75: different"),
    ],
)
def test_the_reason_gives_the_distance_and_the_rule(x: float, verdict: str, rule: str) -> None:
    scorer, face, _, references = scorer_with([REFERENCE])

    score = scorer.score(shot_at(face, x), references)

    assert score.verdict == verdict
    assert score.basis == "face"
    assert score.reason == f"face distance {x:.3f} to the nearest reference is {rule}"


def test_scores_record_the_calibration_profile() -> None:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder()
    reference = swatch(1000)
    face.register(reference, REFERENCE)
    profiled = Scorer(face, images, BAND, calibration_profile="studio-1")
    plain = Scorer(face, images, BAND)

    assert profiled.score(swatch(1), profiled.embed_references([reference])).calibration_profile == "studio-1"
    assert plain.score(swatch(1), plain.embed_references([reference])).calibration_profile is None


# --- the scorer key ---------------------------------------------------------------------------


def key_of(
    *,
    face_model: str = "fake-face-v1",
    image_model: str = "fake-clip-v1",
    texts: bool = False,
    thresholds: ScoringThresholds = BAND,
    calibration_profile: str | None = None,
    max_face_candidates: int = 5,
) -> str:
    return Scorer(
        FakeFaceEmbedder(model_name=face_model),
        FakeImageEmbedder(model_name=image_model),
        thresholds,
        texts=FakeTextEmbedder() if texts else None,
        calibration_profile=calibration_profile,
        max_face_candidates=max_face_candidates,
    ).key


def test_the_scorer_key_is_stable_for_the_same_settings() -> None:
    key = key_of()

    assert re.fullmatch(r"scoring-2-[0-9a-f]{12}", key)
    assert key == key_of()
    assert key == key_of(thresholds=ScoringThresholds(face_same_below=0.5, face_uncertain_below=0.75))
    assert key == scorer_key(
        face_model="fake-face-v1",
        image_model="fake-clip-v1",
        prompt_adherence=False,
        thresholds=BAND,
        calibration_profile=None,
        max_face_candidates=5,
    )


@pytest.mark.parametrize(
    "changed",
    [
        {"face_model": "fake-face-v2"},
        {"image_model": "fake-clip-v2"},
        {"texts": True},
        {"thresholds": ScoringThresholds(face_same_below=0.5, face_uncertain_below=0.7)},
        {"thresholds": ScoringThresholds(face_same_below=0.4, face_uncertain_below=0.75)},
        {"thresholds": replace(BAND, clip_same_above=0.9)},
        {"thresholds": replace(BAND, clip_uncertain_above=0.7)},
        {"calibration_profile": "studio-1"},
        {"max_face_candidates": 1},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_the_scorer_key_changes_with_anything_that_changes_a_score(changed: dict[str, Any]) -> None:
    assert key_of(**changed) != key_of()


def test_the_scorer_key_is_a_valid_contract_key() -> None:
    scorer, face, _, references = scorer_with([REFERENCE])

    score = scorer.score(shot_at(face, 0.1), references)

    assert score.scorer_key == scorer.key
    assert ShotScore.model_validate(score.model_dump()) == score


# --- CLIP-T: prompt adherence -----------------------------------------------------------------


def test_text_similarity_is_the_cosine_between_each_shot_and_its_own_prompt() -> None:
    face, images, texts = FakeFaceEmbedder(), FakeImageEmbedder(), FakeTextEmbedder()
    reference, red, blue, silent = swatch(1000), swatch(1), swatch(2), swatch(3)
    images.register(red, [1.0, 0.0, 0.0, 0.0])
    images.register(blue, [1.0, 1.0, 0.0, 0.0])
    images.register(silent, [0.0, 0.0, 1.0, 0.0])
    texts.register("a red coat", [1.0, 0.0, 0.0, 0.0])
    texts.register("a blue coat", [0.0, 1.0, 0.0, 0.0])
    scorer = Scorer(face, images, texts=texts)
    references = scorer.embed_references([reference])

    scores = scorer.score_batch(
        [
            ShotToScore(red, references, "a red coat"),
            ShotToScore(blue, references, "a blue coat"),
            ShotToScore(silent, references, None),
            ShotToScore(red, references, "a blue coat"),
        ]
    )

    assert texts.batches == [["a red coat", "a blue coat", "a blue coat"]]  # one call, prompted shots only
    similarities = [score.clip.text_similarity for score in scores]
    assert similarities[0] == pytest.approx(1.0)
    assert similarities[1] == pytest.approx(1 / math.sqrt(2))
    assert similarities[2] is None
    assert similarities[3] == pytest.approx(0.0, abs=1e-6)
    assert all(score.verdict == "uncertain" for score in scores), "CLIP-T never decides identity"


def test_text_similarity_is_none_without_a_text_embedder_or_a_prompt() -> None:
    face, images, texts = FakeFaceEmbedder(), FakeImageEmbedder(), FakeTextEmbedder()
    reference, shot = swatch(1000), swatch(1)
    without_texts = Scorer(face, images)
    with_texts = Scorer(face, images, texts=texts)
    references = with_texts.embed_references([reference])

    assert without_texts.score(shot, references, "a red coat").clip.text_similarity is None
    assert with_texts.score(shot, references).clip.text_similarity is None
    assert with_texts.score(shot, references, "").clip.text_similarity is None
    assert texts.batches == []  # nothing to embed, no call


# --- faceless characters: CLIP image similarity alone -----------------------------------------


def faceless_scorer(
    thresholds: ScoringThresholds, dimension: int = 16
) -> tuple[Scorer, FakeImageEmbedder, ReferenceEmbeddings]:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder(calibrated=True, dimension=dimension)
    robot = swatch(1000)
    images.register(robot, np.eye(dimension)[0].tolist())
    scorer = Scorer(face, images, thresholds)
    return scorer, images, scorer.embed_references([robot])


@pytest.mark.parametrize(
    ("vector", "similarity", "verdict"),
    [
        ([1.0] + [0.0] * 15, 1.0, "same"),
        ([1.0] * 4 + [0.0] * 12, 0.5, "same"),  # clip_same_above is inclusive
        ([1.0] * 9 + [0.0] * 7, 1 / 3, "uncertain"),
        ([1.0] * 16, 0.25, "uncertain"),  # clip_uncertain_above is inclusive
        ([0.0, 1.0] + [0.0] * 14, 0.0, "different"),
        ([-1.0] + [0.0] * 15, -1.0, "different"),
    ],
    ids=["identical", "at same_above", "in the band", "at uncertain_above", "orthogonal", "opposite"],
)
def test_faceless_references_are_judged_by_calibrated_clip_thresholds(
    vector: list[float], similarity: float, verdict: str
) -> None:
    # the reference is the first axis: k leading ones give a cosine of 1/sqrt(k), exact in float32 for k = 1, 4, 16
    scorer, images, references = faceless_scorer(ScoringThresholds(clip_same_above=0.5, clip_uncertain_above=0.25))
    shot = swatch(1)
    images.register(shot, vector)

    score = scorer.score(shot, references)

    assert score.clip.image_similarity == pytest.approx(similarity, abs=1e-7)
    assert score.clip.calibrated is True
    assert score.face is None
    assert (score.verdict, score.basis) == (verdict, "clip_image")
    assert score.reason.startswith(f"no face in the references, so CLIP image similarity alone: {similarity:.3f}")
    assert score.reason.endswith(f": {verdict}")


def test_faceless_references_with_uncalibrated_clip_stay_uncertain_however_similar() -> None:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder(calibrated=False)
    robot = swatch(1000)
    scorer = Scorer(face, images)
    references = scorer.embed_references([robot])

    score = scorer.score(robot, references)  # the very same image

    assert score.clip.image_similarity == pytest.approx(1.0)
    assert (score.verdict, score.basis, score.face) == ("uncertain", "clip_image", None)


def test_clip_verdict_rules() -> None:
    thresholds = ScoringThresholds(clip_same_above=0.85, clip_uncertain_above=0.75)

    def verdict(similarity: float, calibrated: bool = True) -> str:
        clip = ClipScore(image_similarity=similarity, calibrated=calibrated, model="m")
        return clip_verdict(clip, thresholds)[0]

    assert [verdict(s) for s in (0.9, 0.85, 0.8, 0.75, 0.7, -1.0)] == [
        "same",
        "same",
        "uncertain",
        "uncertain",
        "different",
        "different",
    ]
    assert verdict(0.99, calibrated=False) == "uncertain"


# --- a batch of several characters -----------------------------------------------------------


def test_a_batch_of_two_characters_keeps_order_and_uses_each_shots_own_references() -> None:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder()
    ada_ref, bo_ref = swatch(1000), swatch(1001)
    face.register(ada_ref, [0.0, 0.0])
    face.register(bo_ref, [5.0, 0.0])
    images.register(ada_ref, [1.0, 0.0, 0.0, 0.0])
    images.register(bo_ref, [0.0, 1.0, 0.0, 0.0])
    scorer = Scorer(face, images, BAND)
    ada, bo = scorer.embed_references([ada_ref]), scorer.embed_references([bo_ref])
    ada_shot, bo_shot, ada_as_bo = swatch(1), swatch(2), swatch(3)
    face.register(ada_shot, [0.1, 0.0])
    face.register(bo_shot, [5.2, 0.0])
    face.register(ada_as_bo, [0.1, 0.0])
    for shot in (ada_shot, ada_as_bo):
        images.register(shot, [1.0, 0.0, 0.0, 0.0])
    images.register(bo_shot, [0.0, 1.0, 0.0, 0.0])
    images.batches.clear()

    scores = scorer.score_batch([ShotToScore(ada_shot, ada), ShotToScore(bo_shot, bo), ShotToScore(ada_as_bo, bo)])

    assert images.batches == [3]
    assert [s.verdict for s in scores] == ["same", "same", "different"]
    distances = [s.face.distance if s.face else None for s in scores]
    assert distances == [pytest.approx(0.1, abs=1e-6), pytest.approx(0.2, abs=1e-6), pytest.approx(4.9, abs=1e-6)]
    assert [s.clip.image_similarity for s in scores] == [pytest.approx(1.0), pytest.approx(1.0), pytest.approx(0.0)]


def test_a_batch_may_mix_faceless_and_face_characters() -> None:
    face, images = FakeFaceEmbedder(), FakeImageEmbedder()
    person_ref, robot_ref = swatch(1000), swatch(1001)
    face.register(person_ref, [0.0, 0.0])
    scorer = Scorer(face, images, BAND)
    person, robot = scorer.embed_references([person_ref]), scorer.embed_references([robot_ref])
    shot = shot_at(face, 0.1)

    on_face, on_clip = scorer.score_batch([ShotToScore(shot, person), ShotToScore(shot, robot)])

    assert (on_face.verdict, on_face.basis) == ("same", "face")
    assert (on_clip.verdict, on_clip.basis, on_clip.face) == ("uncertain", "clip_image", None)
