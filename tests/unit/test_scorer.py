"""The Scorer with the real models: dlib faces (real weights) and open_clip (random weights)."""

from __future__ import annotations

import pytest
from PIL import Image

from contracts import ShotScore
from services.scoring.adapters.clip import OpenClipImageEmbedder
from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.scorer import SCORER_VERSION, ReferenceEmbeddings, Scorer, ScoringThresholds
from tests.sample_images import astronaut, astronaut_variants, grace_hopper, plain_gray

VARIANTS = astronaut_variants()
SHOTS: dict[str, Image.Image] = {**VARIANTS, "grace hopper": grace_hopper(), "plain gray": plain_gray()}


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(DlibFaceEmbedder(), OpenClipImageEmbedder("ViT-B-32", weights=None), ScoringThresholds())


@pytest.fixture(scope="module")
def references(scorer: Scorer) -> ReferenceEmbeddings:
    photo = astronaut()
    return scorer.embed_references([photo, photo.crop((64, 0, 448, 384))])


@pytest.fixture(scope="module")
def scores(scorer: Scorer, references: ReferenceEmbeddings) -> dict[str, ShotScore]:
    return dict(zip(SHOTS, scorer.score_batch(list(SHOTS.values()), references), strict=True))


def test_both_references_show_her_face(references: ReferenceEmbeddings) -> None:
    assert len(references.face_descriptors) == 2
    assert references.clip_mean.shape == (512,)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_astronaut_variants_are_the_same_person(scores: dict[str, ShotScore], name: str) -> None:
    score = scores[name]
    assert score.verdict == "same"
    assert score.face is not None
    assert score.face.distance is not None
    assert score.face.distance < 0.4
    assert score.face.mean_distance is not None
    assert score.face.distance <= score.face.mean_distance


def test_grace_hopper_is_someone_else(scores: dict[str, ShotScore]) -> None:
    score = scores["grace hopper"]
    assert score.verdict == "different"
    assert score.face is not None
    assert score.face.faces_found == 1
    assert score.face.distance is not None
    assert score.face.distance > 0.65


def test_plain_gray_has_no_face(scores: dict[str, ShotScore]) -> None:
    score = scores["plain gray"]
    assert score.verdict == "no_face"
    assert score.face is not None
    assert score.face.faces_found == 0


def test_scores_say_clip_is_uncalibrated_and_name_the_models(scores: dict[str, ShotScore]) -> None:
    for score in scores.values():
        assert score.scorer_version == SCORER_VERSION
        assert score.clip.calibrated is False
        assert score.clip.model == "open_clip ViT-B-32 (random weights, uncalibrated)"
        assert -1.0 <= score.clip.image_similarity <= 1.0
        assert score.scoring_ms > 0.0
        if score.face is not None:
            assert score.face.model.startswith("dlib_face_recognition_resnet_model_v1")
            assert score.face.same_below == 0.6


def test_cached_references_score_exactly_like_fresh_ones(
    scorer: Scorer, references: ReferenceEmbeddings, scores: dict[str, ShotScore]
) -> None:
    cached = ReferenceEmbeddings.from_bytes(references.to_bytes())
    assert cached == references

    again = scorer.score(SHOTS["mirrored"], cached)

    fresh = scores["mirrored"]
    assert again.face == fresh.face
    assert again.clip.image_similarity == pytest.approx(fresh.clip.image_similarity, abs=1e-5)


def test_faceless_references_leave_the_verdict_uncertain(scorer: Scorer) -> None:
    faceless = scorer.embed_references([plain_gray(128)])

    score = scorer.score(SHOTS["grace hopper"], faceless)

    assert faceless.face_descriptors == []
    assert score.verdict == "uncertain"
    assert score.face is None
