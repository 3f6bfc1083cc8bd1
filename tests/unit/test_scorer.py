"""The Scorer with the real models: dlib faces (real weights) and open_clip (random weights)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from contracts import ShotScore
from services.scoring.adapters.clip import OpenClipImageEmbedder
from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.scorer import (
    SCORER_VERSION,
    ReferenceEmbeddings,
    Scorer,
    ScoringThresholds,
    ShotToScore,
    cosine_similarity,
)
from tests.sample_images import astronaut, astronaut_variants, grace_hopper, plain_gray
from tests.unit.two_people import side_by_side

VARIANTS = astronaut_variants()
SHOTS: dict[str, Image.Image] = {**VARIANTS, "grace hopper": grace_hopper(), "plain gray": plain_gray()}


@pytest.fixture(scope="module")
def clip() -> OpenClipImageEmbedder:
    return OpenClipImageEmbedder("ViT-B-32", weights=None)


@pytest.fixture(scope="module")
def scorer(clip: OpenClipImageEmbedder) -> Scorer:
    return Scorer(DlibFaceEmbedder(), clip, ScoringThresholds(), texts=clip)


@pytest.fixture(scope="module")
def references(scorer: Scorer) -> ReferenceEmbeddings:
    photo = astronaut()
    return scorer.embed_references([photo, photo.crop((64, 0, 448, 384))])


@pytest.fixture(scope="module")
def scores(scorer: Scorer, references: ReferenceEmbeddings) -> dict[str, ShotScore]:
    shots = [ShotToScore(image, references) for image in SHOTS.values()]
    return dict(zip(SHOTS, scorer.score_batch(shots), strict=True))


def test_both_references_show_her_face(references: ReferenceEmbeddings) -> None:
    assert len(references.face_descriptors) == 2
    assert references.clip_mean.shape == (512,)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_astronaut_variants_are_the_same_person(scores: dict[str, ShotScore], name: str) -> None:
    score = scores[name]
    assert score.verdict == "same"
    assert score.basis == "face"
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


def test_scores_say_clip_is_uncalibrated_and_name_the_models(scorer: Scorer, scores: dict[str, ShotScore]) -> None:
    for score in scores.values():
        assert score.scorer_version == SCORER_VERSION
        assert score.scorer_key == scorer.key
        assert score.clip.calibrated is False
        assert score.clip.text_similarity is None  # no prompt given
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
    assert score.basis == "clip_image"
    assert "random weights" in score.reason
    assert score.face is None


def test_prompt_adherence_is_the_cosine_between_prompt_and_shot(
    scorer: Scorer, clip: OpenClipImageEmbedder, references: ReferenceEmbeddings
) -> None:
    prompt = "a portrait of an astronaut in front of a flag"
    shot = SHOTS["mirrored"]

    score = scorer.score(shot, references, prompt)

    expected = cosine_similarity(clip.embed([shot])[0], clip.embed_texts([prompt])[0])
    assert score.clip.text_similarity == pytest.approx(expected, abs=1e-5)
    assert score.verdict == "same"


# --- two people in one shot: the one closest to the references is the character ---------------


@pytest.fixture(scope="module")
def composite() -> Image.Image:
    return side_by_side()


@pytest.mark.parametrize(("person", "photo"), [("the astronaut", astronaut), ("Grace Hopper", grace_hopper)])
def test_of_two_people_the_one_matching_the_references_is_judged(
    scorer: Scorer, composite: Image.Image, person: str, photo: Callable[[], Image.Image]
) -> None:
    own_references = scorer.embed_references([photo()])

    score = scorer.score(composite, own_references)

    assert len(own_references.face_descriptors) == 1
    assert score.verdict == "same", f"{person}: {score.reason}"
    assert score.face is not None
    assert score.face.faces_found >= 2
    assert score.face.candidates == 2
    assert "several_candidates" in score.face.notes
    assert score.face.distance is not None
    assert score.face.distance < 0.2  # measured 0.0 (the astronaut) and 0.08 (Grace Hopper)
    assert "(the closest of 2 faces)" in score.reason


def test_with_one_candidate_only_the_larger_face_counts(composite: Image.Image, clip: OpenClipImageEmbedder) -> None:
    primary_only = Scorer(DlibFaceEmbedder(), clip, ScoringThresholds(), max_face_candidates=1)
    astronaut_references = primary_only.embed_references([astronaut()])

    score = primary_only.score(composite, astronaut_references)

    assert score.face is not None
    assert score.face.candidates == 1
    assert "several_candidates" not in score.face.notes
    assert score.verdict == "different"  # Grace Hopper's face, the larger, is the only one compared


def test_of_two_people_the_astronaut_is_chosen_against_two_reference_faces(
    scorer: Scorer, references: ReferenceEmbeddings, composite: Image.Image
) -> None:
    score = scorer.score(composite, references)

    assert score.verdict == "same"
    assert score.face is not None
    assert score.face.candidates == 2
