"""The scorer's rules with fake models: verdicts, distances, CLIP similarity, batching, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from services.scoring.ports import FaceObservation
from services.scoring.scorer import (
    SCORER_VERSION,
    ReferenceEmbeddings,
    Scorer,
    ScoringThresholds,
    StaleReferenceEmbeddings,
    cosine_similarity,
    face_verdict,
)
from tests.fakes import FakeFaceEmbedder, FakeImageEmbedder, swatch

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

    assert [s.verdict for s in scorer.score_batch([below, at], references)] == ["same", "different"]


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


def test_references_without_any_face_give_uncertain_and_no_face_score() -> None:
    scorer, face, _, references = scorer_with([None, None])
    observed_before = face.observed

    score = scorer.score(shot_at(face, 0.0), references)

    assert score.verdict == "uncertain"
    assert score.face is None
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


def test_score_batch_embeds_all_shots_in_one_clip_call_and_keeps_order() -> None:
    scorer, face, images, references = scorer_with([REFERENCE])
    shots = [swatch(1), swatch(2), swatch(3)]
    face.register(shots[0], [0.9, 0.0])
    face.register(shots[2], [0.1, 0.0])
    images.batches.clear()

    scores = scorer.score_batch(shots, references)

    assert images.batches == [3]
    assert [s.verdict for s in scores] == ["different", "no_face", "same"]
    assert all(s.scorer_version == SCORER_VERSION == "scoring-1" for s in scores)
    assert all(s.scoring_ms >= 0.0 for s in scores)
    assert scorer.score_batch([], references) == []


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
    assert scorer.embedding_version == "scoring-1; fake-face-v1; fake-clip-v1"
    with pytest.raises(StaleReferenceEmbeddings, match="embed the references again"):
        upgraded.score(swatch(1), references)


@pytest.mark.parametrize(("same", "uncertain"), [(0.0, 0.6), (0.7, 0.6), (-0.1, 0.5)])
def test_thresholds_must_be_ordered_and_positive(same: float, uncertain: float) -> None:
    with pytest.raises(ValueError, match="face_same_below"):
        ScoringThresholds(face_same_below=same, face_uncertain_below=uncertain)


@pytest.mark.parametrize(
    ("faces_found", "descriptor", "box"),
    [(1, None, None), (0, np.zeros(128, np.float32), (0, 0, 1, 1)), (1, np.zeros(128, np.float32), None)],
)
def test_face_observation_refuses_inconsistent_fields(
    faces_found: int, descriptor: np.ndarray | None, box: tuple[int, int, int, int] | None
) -> None:
    with pytest.raises(ValueError, match="faces_found"):
        FaceObservation(faces_found=faces_found, descriptor=descriptor, box=box)


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
