"""DlibFaceEmbedder with the real offline dlib weights, on public-domain photos.

The astronaut's variants must stay close to her own photo, Grace Hopper must be far from her,
and images without a face must say so. Distances are measured values with some headroom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.ports import FaceDescriptor, FaceObservation, ModelWeightsUnavailable
from tests.sample_images import astronaut, astronaut_variants, darkened, grace_hopper, plain_gray
from tests.unit.two_people import ASTRONAUT_SIDE, GRACE_HOPPER_SIDE, side_by_side

SAME_BELOW = 0.6


@pytest.fixture(scope="module")
def embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


@pytest.fixture(scope="module")
def astronaut_face(embedder: DlibFaceEmbedder) -> FaceObservation:
    return embedder.observe(astronaut())


def distance(a: FaceDescriptor | None, b: FaceDescriptor | None) -> float:
    assert a is not None
    assert b is not None
    return float(np.linalg.norm(a - b))


def test_astronaut_has_one_face_with_a_128_d_descriptor(astronaut_face: FaceObservation) -> None:
    assert astronaut_face.faces_found == 1
    assert astronaut_face.descriptor is not None
    assert astronaut_face.descriptor.shape == (128,)
    assert astronaut_face.descriptor.dtype == np.float32
    assert np.isfinite(astronaut_face.descriptor).all()


def test_box_is_around_her_face_not_the_mission_patch(astronaut_face: FaceObservation) -> None:
    assert astronaut_face.box is not None
    left, top, right, bottom = astronaut_face.box
    assert 150 < left < right < 300
    assert 50 < top < bottom < 200  # the patch is at y 330-430


def test_same_photo_gives_the_same_descriptor(embedder: DlibFaceEmbedder, astronaut_face: FaceObservation) -> None:
    again = embedder.observe(astronaut())
    assert again.descriptor is not None
    assert astronaut_face.descriptor is not None
    assert np.array_equal(again.descriptor, astronaut_face.descriptor)


@pytest.mark.parametrize(("name", "image"), list(astronaut_variants().items()))
def test_astronaut_variants_stay_the_same_person(
    embedder: DlibFaceEmbedder, astronaut_face: FaceObservation, name: str, image: Image.Image
) -> None:
    seen = embedder.observe(image)

    assert seen.faces_found >= 1, f"no face found when {name}"  # the mission patch may count too
    assert distance(seen.descriptor, astronaut_face.descriptor) < 0.4


def test_grace_hopper_is_a_different_person(embedder: DlibFaceEmbedder, astronaut_face: FaceObservation) -> None:
    grace = embedder.observe(grace_hopper())

    assert grace.faces_found == 1
    assert distance(grace.descriptor, astronaut_face.descriptor) > 0.65  # measured 0.694


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("plain gray", plain_gray()),
        ("random noise", Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8))),
        ("black but for 1-level noise", darkened(astronaut(), 0.005)),
        ("tiny", Image.new("L", (1, 1), 0)),
    ],
)
def test_no_face(embedder: DlibFaceEmbedder, name: str, image: Image.Image) -> None:
    assert embedder.observe(image) == FaceObservation(faces_found=0)
    assert embedder.observe(image, max_candidates=5) == FaceObservation(faces_found=0)


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("upside down", ImageOps.flip(astronaut())),
        ("rotated 90 degrees", astronaut().rotate(90)),
        ("face under ~30 px (image 160 px)", astronaut().resize((160, 160), Image.Resampling.LANCZOS)),
    ],
)
def test_known_blind_spots_of_the_hog_detector(embedder: DlibFaceEmbedder, name: str, image: Image.Image) -> None:
    """Not wishes, measurements: the frontal HOG detector misses these; a shot like this scores no_face."""
    assert embedder.observe(image).faces_found == 0


def test_darkness_rescue_uses_the_stretched_image(embedder: DlibFaceEmbedder, astronaut_face: FaceObservation) -> None:
    very_dark = darkened(astronaut(), 0.02)  # pixel values 0-5: HOG alone finds nothing
    seen = embedder.observe(very_dark)
    assert distance(seen.descriptor, astronaut_face.descriptor) < SAME_BELOW  # measured 0.32
    assert seen.notes == ("contrast_stretched",)


def test_a_face_found_only_on_an_enlarged_copy_says_so(embedder: DlibFaceEmbedder) -> None:
    small = astronaut().resize((224, 224), Image.Resampling.LANCZOS)  # her face is ~40 px: upsample 1 finds it

    assert embedder.observe(small).notes == ("upsampled",)


def test_a_plain_photo_has_no_notes(astronaut_face: FaceObservation) -> None:
    assert astronaut_face.notes == ()
    assert len(astronaut_face.candidates) == 1


# --- several people in one shot ------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_people(embedder: DlibFaceEmbedder) -> FaceObservation:
    return embedder.observe(side_by_side(), max_candidates=5)


def inside(box: tuple[int, int, int, int] | None, area: tuple[int, int, int, int]) -> bool:
    assert box is not None
    left, top, right, bottom = box
    return area[0] <= left < right <= area[2] and area[1] <= top < bottom <= area[3]


def test_two_people_give_two_candidates_the_larger_face_first(two_people: FaceObservation) -> None:
    assert two_people.faces_found >= 2  # measured 3: the mission patch is a weak third detection
    assert len(two_people.candidates) == 2
    primary, other = two_people.candidates
    assert inside(primary.box, GRACE_HOPPER_SIDE)
    assert inside(other.box, ASTRONAUT_SIDE)
    assert two_people.descriptor is primary.descriptor
    assert two_people.notes == ()  # several_candidates is the scorer's to say


def test_each_candidate_is_described_as_its_own_person(
    embedder: DlibFaceEmbedder, two_people: FaceObservation, astronaut_face: FaceObservation
) -> None:
    grace = embedder.observe(grace_hopper())
    primary, other = two_people.candidates

    assert distance(primary.descriptor, grace.descriptor) < 0.2  # measured 0.08
    assert distance(other.descriptor, astronaut_face.descriptor) < 0.2  # measured 0.0
    assert distance(primary.descriptor, other.descriptor) > 0.65


def test_max_candidates_limits_the_faces_described(embedder: DlibFaceEmbedder, two_people: FaceObservation) -> None:
    one = embedder.observe(side_by_side(), max_candidates=1)

    assert one.faces_found == two_people.faces_found
    assert len(one.candidates) == 1
    assert one.box == two_people.box
    with pytest.raises(ValueError, match="max_candidates"):
        embedder.observe(side_by_side(), max_candidates=0)


def test_model_name_says_model_and_jitters(embedder: DlibFaceEmbedder) -> None:
    assert embedder.model_name == "dlib_face_recognition_resnet_model_v1 (HOG, jitters=1)"


def test_jitters_must_be_positive() -> None:
    with pytest.raises(ValueError, match="jitters"):
        DlibFaceEmbedder(jitters=0)


def test_missing_model_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsUnavailable, match="face-recognition-models"):
        DlibFaceEmbedder(models_dir=tmp_path)
