"""ArcFaceEmbedder's plumbing, with a tiny stand-in ONNX model built here (no real ArcFace weights exist here).

The stand-in has the contract of insightface's recognition models (input Nx3x112x112 float, output
NxD) but is a fixed random projection: it proves the plumbing (detection as the dlib backend's,
alignment, normalisation, ONNX I/O, naming, errors, selection by setting), NOT ArcFace's accuracy.
Whether two shots are the same person is only meaningful with real weights and a calibration profile.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import dlib
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from services.scoring.adapters.arcface import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    LANDMARKS_68_FILE,
    ArcFaceEmbedder,
    aligned_face,
    five_points,
    similarity_transform,
)
from services.scoring.adapters.face import DlibFaceEmbedder, default_models_dir
from services.scoring.adapters.models import build_face_embedder, build_scorer
from services.scoring.ports import FaceObservation, ModelWeightsUnavailable, ScoringModelError
from services.scoring.settings import ScoringSettings
from tests.sample_images import astronaut, darkened, grace_hopper, plain_gray
from tests.unit.two_people import ASTRONAUT_SIDE, GRACE_HOPPER_SIDE, side_by_side

EMBEDDING_SIZE = 24  # not 512, to keep the stand-in small (~3.6 MB); the embedder reads it from the model


def tiny_model(
    path: Path,
    *,
    batch: int | str = "N",
    input_shape: tuple[int, int, int] = (3, ALIGNED_SIZE, ALIGNED_SIZE),
    size: int = EMBEDDING_SIZE,
    seed: int = 0,
) -> Path:
    """An ONNX file with an ArcFace model's contract: Flatten, MatMul by a fixed random matrix, Add a bias."""
    features = int(np.prod(input_shape))
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((features, size)) / np.sqrt(features)).astype(np.float32)
    bias = rng.standard_normal(size).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input.1"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["projected"]),
            helper.make_node("Add", ["projected", "bias"], ["embedding"]),
        ],
        "tiny_arcface_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, size])],
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("arcface") / "w600k_stand_in.onnx")


@pytest.fixture(scope="module")
def embedder(weights: Path) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(weights, threads=1)


@pytest.fixture(scope="module")
def dlib_embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


def is_unit_descriptor(descriptor: npt.NDArray[np.float32] | None) -> bool:
    assert descriptor is not None
    return (
        descriptor.shape == (EMBEDDING_SIZE,)
        and descriptor.dtype == np.float32
        and abs(float(np.linalg.norm(descriptor)) - 1.0) < 1e-5
    )


# --- alignment -----------------------------------------------------------------------------------


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> npt.NDArray[np.float64]:
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([scale * rotation, np.array(shift)[:, None]])


def apply(matrix: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize(
    ("scale", "degrees", "shift"), [(1.0, 0.0, (0.0, 0.0)), (2.3, 17.0, (80.5, 41.0)), (0.6, -40.0, (-3.0, 9.0))]
)
def test_the_transform_puts_five_landmarks_exactly_on_the_template(
    scale: float, degrees: float, shift: tuple[float, float]
) -> None:
    face_in_photo = apply(similarity(scale, degrees, shift), ARCFACE_TEMPLATE)

    matrix = similarity_transform(face_in_photo, ARCFACE_TEMPLATE)

    np.testing.assert_allclose(apply(matrix, face_in_photo), ARCFACE_TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(matrix[:, :2]), 1 / scale**2, rtol=1e-9)  # the inverse's scale


def test_the_transform_is_the_least_squares_similarity_and_never_a_mirror() -> None:
    noisy = apply(similarity(1.7, 8.0, (30.0, 12.0)), ARCFACE_TEMPLATE) + np.random.default_rng(1).normal(
        0, 1.5, (5, 2)
    )
    matrix = similarity_transform(noisy, ARCFACE_TEMPLATE)
    residual = float(((apply(matrix, noisy) - ARCFACE_TEMPLATE) ** 2).sum())
    for nudge in (similarity(1.01, 0.0, (0.0, 0.0)), similarity(1.0, 0.5, (0.0, 0.0)), similarity(1.0, 0.0, (0.2, 0))):
        nudged = np.vstack([nudge, [0, 0, 1]]) @ np.vstack([matrix, [0, 0, 1]])
        assert float(((apply(nudged[:2], noisy) - ARCFACE_TEMPLATE) ** 2).sum()) > residual

    mirrored = ARCFACE_TEMPLATE * [-1.0, 1.0]  # a left-right flipped face: no rotation can undo it
    assert np.linalg.det(similarity_transform(mirrored, ARCFACE_TEMPLATE)[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_the_warped_crop_has_the_landmarks_where_the_template_says() -> None:
    """Blobs drawn at the five points of a larger, rotated face land on the template's pixels (sub-pixel)."""
    face_in_photo = apply(similarity(2.1, 17.0, (150.0, 30.0)), ARCFACE_TEMPLATE)
    ys, xs = np.mgrid[0:320, 0:360]
    photo = np.zeros((320, 360), np.float64)
    for x, y in face_in_photo:
        photo += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.5**2))
    pixels = np.repeat((255 * photo / photo.max()).round().astype(np.uint8)[:, :, None], 3, axis=2)

    crop = aligned_face(pixels, face_in_photo)

    assert crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    assert crop.dtype == np.uint8
    brightness = crop[:, :, 0].astype(np.float64)
    for x, y in ARCFACE_TEMPLATE:
        left, top = round(x) - 5, round(y) - 5
        window = brightness[top : top + 11, left : left + 11]
        window_ys, window_xs = np.mgrid[top : top + 11, left : left + 11]
        centre = (float((window * window_xs).sum() / window.sum()), float((window * window_ys).sum() / window.sum()))
        assert centre == pytest.approx((x, y), abs=0.15)


class Part:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class Shape:
    def __init__(self, points: npt.NDArray[np.int64]) -> None:
        self._points = points

    def parts(self) -> list[Part]:
        return [Part(int(x), int(y)) for x, y in self._points]


def test_five_points_are_eye_centres_nose_tip_and_mouth_corners_of_the_68() -> None:
    points = np.random.default_rng(2).integers(0, 500, (68, 2))

    five = five_points(Shape(points))

    np.testing.assert_allclose(five[0], points[36:42].mean(axis=0))
    np.testing.assert_allclose(five[1], points[42:48].mean(axis=0))
    np.testing.assert_array_equal(five[2:], points[[30, 48, 54]])
    with pytest.raises(ValueError, match="68 landmarks"):
        five_points(Shape(points[:5]))


@pytest.mark.parametrize("photo", [astronaut, grace_hopper])
def test_real_landmarks_fit_the_template_in_the_right_order(photo: Any) -> None:
    """dlib's own 68 points on real faces, in five_points' order, fit the template closely (a wrong order would not)."""
    pixels = np.asarray(photo().convert("RGB"))
    rect = dlib.get_frontal_face_detector()(pixels, 0)[0]
    five = five_points(dlib.shape_predictor(str(default_models_dir() / LANDMARKS_68_FILE))(pixels, rect))

    misfit = np.linalg.norm(apply(similarity_transform(five, ARCFACE_TEMPLATE), five) - ARCFACE_TEMPLATE, axis=1)
    swapped = five[[1, 0, 2, 4, 3]]
    swapped_misfit = np.linalg.norm(
        apply(similarity_transform(swapped, ARCFACE_TEMPLATE), swapped) - ARCFACE_TEMPLATE, axis=1
    )

    assert misfit.max() < 8  # measured 4.0 px (Grace Hopper) and 6.8 px (the astronaut's wide smile)
    assert swapped_misfit.max() > 3 * misfit.max()


# --- observing faces -------------------------------------------------------------------------------


def test_astronaut_has_one_face_with_a_unit_descriptor_of_the_models_size(embedder: ArcFaceEmbedder) -> None:
    seen = embedder.observe(astronaut())

    assert seen.faces_found == 1
    assert is_unit_descriptor(seen.descriptor)
    assert embedder.embedding_size == EMBEDDING_SIZE
    assert seen.notes == ()


def test_same_photo_same_descriptor_another_person_another(embedder: ArcFaceEmbedder) -> None:
    first, again, grace = (embedder.observe(image).descriptor for image in (astronaut(), astronaut(), grace_hopper()))
    assert first is not None
    assert again is not None
    assert grace is not None

    assert np.array_equal(first, again)
    assert float(np.linalg.norm(first - grace)) > 0.1  # different pixels; says nothing about identity


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("astronaut", astronaut()),
        ("grace hopper", grace_hopper()),
        ("two people", side_by_side()),
        ("plain gray", plain_gray()),
        ("black but for 1-level noise", darkened(astronaut(), 0.005)),
        ("very dark (contrast stretched)", darkened(astronaut(), 0.02)),
        ("small (upsampled)", astronaut().resize((224, 224), Image.Resampling.LANCZOS)),
        ("upside down", astronaut().rotate(180)),
    ],
)
def test_detection_is_the_dlib_backends(
    embedder: ArcFaceEmbedder, dlib_embedder: DlibFaceEmbedder, name: str, image: Image.Image
) -> None:
    ours = embedder.observe(image, max_candidates=5)
    theirs = dlib_embedder.observe(image, max_candidates=5)

    assert ours.faces_found == theirs.faces_found
    assert [(c.box, c.detector_score) for c in ours.candidates] == [
        (c.box, c.detector_score) for c in theirs.candidates
    ]
    assert ours.notes == theirs.notes
    assert all(is_unit_descriptor(candidate.descriptor) for candidate in ours.candidates)
    if theirs.faces_found == 0:
        assert ours == FaceObservation(faces_found=0)


def test_two_people_are_ranked_and_described_separately(embedder: ArcFaceEmbedder) -> None:
    seen = embedder.observe(side_by_side(), max_candidates=5)
    grace, her = embedder.observe(grace_hopper()).descriptor, embedder.observe(astronaut()).descriptor

    assert len(seen.candidates) == 2
    primary, other = seen.candidates
    assert primary.box is not None
    assert other.box is not None
    assert GRACE_HOPPER_SIDE[0] <= primary.box[0]
    assert other.box[2] <= ASTRONAUT_SIDE[2]
    assert grace is not None
    assert her is not None
    # pixel-level only (the stand-in is a random projection): the same crop, or nearly, gives the closer output
    assert float(np.linalg.norm(other.descriptor - her)) < 1e-5  # the same detection, so the same crop
    assert np.linalg.norm(primary.descriptor - grace) < np.linalg.norm(primary.descriptor - her)  # 0.30 and 0.50
    assert len(embedder.observe(side_by_side(), max_candidates=1).candidates) == 1
    with pytest.raises(ValueError, match="max_candidates"):
        embedder.observe(side_by_side(), max_candidates=0)


def test_a_model_with_batch_fixed_at_one_gives_the_same_descriptors(embedder: ArcFaceEmbedder, tmp_path: Path) -> None:
    one_at_a_time = ArcFaceEmbedder(tiny_model(tmp_path / "batch1.onnx", batch=1), threads=1)

    batched = embedder.observe(side_by_side(), max_candidates=5).candidates
    looped = one_at_a_time.observe(side_by_side(), max_candidates=5).candidates

    assert len(looped) == len(batched) == 2
    for a, b in zip(batched, looped, strict=True):
        np.testing.assert_allclose(a.descriptor, b.descriptor, atol=1e-6)


def test_the_output_size_is_read_from_the_model(tmp_path: Path) -> None:
    wide = ArcFaceEmbedder(tiny_model(tmp_path / "wide.onnx", size=40))

    assert wide.embedding_size == 40
    descriptor = wide.observe(astronaut()).descriptor
    assert descriptor is not None
    assert descriptor.shape == (40,)


# --- naming and errors -----------------------------------------------------------------------------


def test_model_name_has_the_file_name_and_digest(embedder: ArcFaceEmbedder, weights: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    assert embedder.model_name == f"arcface onnx w600k_stand_in.onnx sha256:{digest} (HOG detector)"

    other_weights = ArcFaceEmbedder(tiny_model(tmp_path / "w600k_stand_in.onnx", seed=1))
    assert other_weights.model_name != embedder.model_name  # same name, new file: a new scorer key


def test_missing_weights_say_what_to_put_where(tmp_path: Path) -> None:
    missing = tmp_path / "w600k_r50.onnx"
    with pytest.raises(ModelWeightsUnavailable, match=r"w600k_r50\.onnx.*buffalo_l.*LIKENESS_SCORING_ARCFACE_WEIGHTS"):
        ArcFaceEmbedder(missing)
    with pytest.raises(ModelWeightsUnavailable, match="cannot be read"):
        ArcFaceEmbedder(tmp_path)  # a folder, not a file


def test_a_file_that_is_not_onnx_says_so(tmp_path: Path) -> None:
    junk = tmp_path / "w600k_r50.onnx"
    junk.write_bytes(b"<html>not a model</html>")

    with pytest.raises(ModelWeightsUnavailable, match="onnxruntime cannot load"):
        ArcFaceEmbedder(junk)


def test_a_model_with_another_input_shape_is_refused(tmp_path: Path) -> None:
    detector_sized = tiny_model(tmp_path / "det.onnx", input_shape=(3, 64, 64))

    with pytest.raises(ScoringModelError, match=r"\[.*3, 64, 64\].*Nx3x112x112"):
        ArcFaceEmbedder(detector_sized)


def test_a_fixed_batch_over_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScoringModelError, match="batches of exactly 4"):
        ArcFaceEmbedder(tiny_model(tmp_path / "batch4.onnx", batch=4))


def test_thread_count_must_be_positive(weights: Path) -> None:
    with pytest.raises(ValueError, match="threads"):
        ArcFaceEmbedder(weights, threads=0)


# --- selection by setting ---------------------------------------------------------------------------


def test_settings_choose_the_backend(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ScoringSettings().face_backend == "dlib"
    assert isinstance(build_face_embedder(ScoringSettings(face_process=False)), DlibFaceEmbedder)

    monkeypatch.setenv("LIKENESS_SCORING_FACE_BACKEND", "arcface")
    monkeypatch.setenv("LIKENESS_SCORING_ARCFACE_WEIGHTS", str(weights))
    from_env = ScoringSettings()
    assert from_env.arcface_weights == weights
    assert isinstance(build_face_embedder(from_env), ArcFaceEmbedder)  # face_process (default on) is dlib's only


def test_arcface_without_weights_fails_at_start_up() -> None:
    with pytest.raises(ModelWeightsUnavailable, match="LIKENESS_SCORING_ARCFACE_WEIGHTS"):
        build_scorer(ScoringSettings(face_backend="arcface", prompt_adherence=False, face_process=False))


def test_build_scorer_runs_arcface_when_set(weights: Path, embedder: ArcFaceEmbedder) -> None:
    settings = ScoringSettings(
        face_backend="arcface", arcface_weights=weights, prompt_adherence=False, face_process=False
    )

    scorer = build_scorer(settings)

    assert isinstance(scorer.face_embedder, ArcFaceEmbedder)
    assert scorer.face_embedder.model_name == embedder.model_name
    assert embedder.model_name in scorer.embedding_version


def test_calibrate_runs_the_backend_the_settings_choose_and_its_profile_loads(
    weights: Path, embedder: ArcFaceEmbedder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rich.console import Console

    from infra.calibrate import calibrate
    from services.scoring.adapters.models import thresholds_from

    images = tmp_path / "images"
    images.mkdir()
    astronaut().save(images / "a.png")
    astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "a_mirrored.png")
    grace_hopper().save(images / "g.png")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_a,image_b,label\na.png,a_mirrored.png,same\na.png,g.png,different\n", encoding="utf-8")
    monkeypatch.setenv("LIKENESS_SCORING_FACE_BACKEND", "arcface")
    monkeypatch.setenv("LIKENESS_SCORING_ARCFACE_WEIGHTS", str(weights))

    run = calibrate(pairs, images, calibration_dir=tmp_path / "profiles", console=Console(quiet=True), save="arc")

    assert run.report.face_model == embedder.model_name
    profile = tmp_path / "profiles" / "arc.json"
    settings = ScoringSettings(calibration_profile=profile)
    thresholds, name = thresholds_from(settings, face_model=embedder.model_name)
    assert name == "arc"
    assert thresholds.face_same_below != ScoringSettings().face_same_below  # the profile's, not dlib's 0.6
