"""Face identity with dlib: HOG detector, 5-point landmarks, ResNet descriptor (offline weights).

The weights come from the PyPI package `face-recognition-models`, loaded by file path: importing
that package needs `pkg_resources`, which setuptools 81+ no longer ships.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlib
import numpy as np
from PIL import Image, ImageOps

from contracts.values import FaceNote
from services.scoring.adapters.rgb import to_rgb_array
from services.scoring.ports import FaceBox, FaceCandidate, FaceObservation, ModelWeightsUnavailable

SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# Which detection is "the face": HOG also fires, weakly, on things that are not faces (the
# astronaut's mission patch). Detections scoring under 30% of the best score are passed over, then
# the largest box wins. dlib's HOG pyramid shrinks by 5/6 per level, so boxes from neighbouring
# levels differ by 1.44x in area; boxes within 1.2x of the largest come from the same level and
# count as equally large, and among those the detector's score decides. Measured on the astronaut:
# the largest box alone is the patch when she is rotated 10 or -30 degrees or darkened to 3%; the
# patch then scores 6-28% of her face. The cut-off stays low because weak detections are often
# real faces (a partly hidden person in a group photo scored 16% of the best), which is also why
# faces_found counts every detection.
_MIN_SCORE_FRACTION_OF_BEST = 0.3
_SAME_SCALE_AREA_RATIO = 1.2
_AUTOCONTRAST_CUTOFF_PERCENT = 1.0
# An image whose gray values span fewer levels than this is black, not dark: stretching it only
# invents a face (the astronaut at 0.5% brightness, values 0-1, came out "different").
_MIN_GRAY_LEVELS_TO_STRETCH = 4


def default_models_dir() -> Path:
    """Where `face-recognition-models` keeps its .dat files, found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ModelWeightsUnavailable(
            "The face models are not installed: run `pip install face-recognition-models==0.3.0` "
            "(or ./taskw, which installs requirements.lock)."
        )
    return Path(spec.origin).parent / "models"


class DlibFaceEmbedder:
    """Finds faces with dlib's HOG detector and describes them with dlib's ResNet, the largest first.

    Detection tries upsample 0, then 1 (up to `max_upsample`); if nothing is found it retries
    on an autocontrasted grayscale copy, which rescues dark and low-contrast shots, and then
    describes the face on that copy too (measured: far closer to the undarkened descriptor).
    Models load once, here. Calls are serialised by a lock: one instance per process is enough.
    """

    def __init__(self, *, jitters: int = 1, max_upsample: int = 1, models_dir: Path | None = None) -> None:
        if jitters < 1:
            raise ValueError("jitters must be >= 1 (dlib treats 0 as 1)")
        directory = models_dir if models_dir is not None else default_models_dir()
        self._jitters = jitters
        self._faces = HogFaces(max_upsample=max_upsample)
        self._shape_predictor: Any = dlib.shape_predictor(_model_file(directory, SHAPE_PREDICTOR_FILE))
        self._descriptor_model: Any = dlib.face_recognition_model_v1(_model_file(directory, DESCRIPTOR_MODEL_FILE))
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return f"dlib_face_recognition_resnet_model_v1 (HOG, jitters={self._jitters})"

    def observe(self, image: Image.Image, *, max_candidates: int = 1) -> FaceObservation:
        if max_candidates < 1:
            raise ValueError("max_candidates must be >= 1")
        with self._lock:
            found = self._faces.find(to_rgb_array(image))
            if found is None:
                return FaceObservation(faces_found=0)
            pixels, candidates = found.pixels, []
            for rect, score in found.ranked[:max_candidates]:
                shape = self._shape_predictor(pixels, rect)
                descriptor = self._descriptor_model.compute_face_descriptor(pixels, shape, self._jitters)
                candidates.append(FaceCandidate(np.asarray(descriptor, dtype=np.float32), found.box(rect), score))
        return FaceObservation(faces_found=found.faces_found, candidates=tuple(candidates), notes=found.notes)


Pixels = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class FoundFaces:
    """What the HOG detector found: on `pixels` (the image, or its contrast-stretched copy)."""

    pixels: Pixels
    faces_found: int
    ranked: list[tuple[Any, float]]  # the confident detections, primary first (see _ranked)
    notes: tuple[FaceNote, ...]

    def box(self, rect: Any) -> FaceBox:
        return _clipped_box(rect, width=self.pixels.shape[1], height=self.pixels.shape[0])


class HogFaces:
    """dlib's HOG detector with the fallbacks both face backends share: upsample 0, then up to
    `max_upsample`; if nothing is found, the same on an autocontrasted grayscale copy. Not thread-safe."""

    def __init__(self, *, max_upsample: int = 1) -> None:
        if max_upsample < 0:
            raise ValueError("max_upsample must be >= 0")
        self._upsample_steps = tuple(range(max_upsample + 1))
        self._detector: Any = dlib.get_frontal_face_detector()

    def find(self, pixels: Pixels) -> FoundFaces | None:
        notes: list[FaceNote] = []
        found, upsample = self._detect(pixels)
        if not found:
            enhanced = _autocontrasted_gray(pixels)
            if enhanced is not None:
                found, upsample = self._detect(enhanced)
                if found:
                    pixels = enhanced
                    notes.append("contrast_stretched")
        if not found:
            return None
        if upsample > 0:
            notes.append("upsampled")
        return FoundFaces(pixels, len(found), _ranked(_confident(found)), tuple(notes))

    def _detect(self, pixels: Pixels) -> tuple[list[tuple[Any, float]], int]:
        """Detections with their scores, and the upsampling that found them."""
        for upsample in self._upsample_steps:
            rectangles, scores, _ = self._detector.run(pixels, upsample, 0.0)
            if len(rectangles) > 0:
                return list(zip(rectangles, (float(s) for s in scores), strict=True)), upsample
        return [], 0


def _model_file(directory: Path, name: str) -> str:
    path = directory / name
    if not path.is_file():
        raise ModelWeightsUnavailable(
            f"Face model file {path} is missing: reinstall `face-recognition-models==0.3.0` "
            "or pass models_dir= pointing at a folder holding it."
        )
    return str(path)


def _confident(found: Sequence[tuple[Any, float]]) -> list[tuple[Any, float]]:
    """Detections scoring at least 30% of the best one: the candidates for "the" face."""
    best_score = max(score for _, score in found)
    return [(rect, score) for rect, score in found if score >= best_score * _MIN_SCORE_FRACTION_OF_BEST]


def _ranked(confident: Sequence[tuple[Any, float]]) -> list[tuple[Any, float]]:
    """Largest first; boxes of the same pyramid scale as a larger one rank by the detector's score.

    The first is the primary face, the one a reference image stands for.
    """

    def rank(item: tuple[int, tuple[Any, float]]) -> tuple[int, float, int]:
        index, (rect, score) = item
        # the pyramid level, counted down from the largest box: same-scale boxes share a level
        level = math.floor(math.log(largest_area / max(1, int(rect.area()))) / math.log(_SAME_SCALE_AREA_RATIO))
        return (level, -score, index)

    largest_area = max(int(rect.area()) for rect, _ in confident)
    return [item for _, item in sorted(enumerate(confident), key=rank)]


def _autocontrasted_gray(
    pixels: np.ndarray[Any, np.dtype[np.uint8]],
) -> np.ndarray[Any, np.dtype[np.uint8]] | None:
    """A grayscale copy stretched to the full range, or None when there is nothing to stretch."""
    gray = Image.fromarray(pixels).convert("L")
    if int(np.ptp(np.asarray(gray))) < _MIN_GRAY_LEVELS_TO_STRETCH:
        return None
    stretched = ImageOps.autocontrast(gray, cutoff=_AUTOCONTRAST_CUTOFF_PERCENT)
    return np.ascontiguousarray(np.asarray(stretched.convert("RGB"), dtype=np.uint8))


def _clipped_box(rect: Any, *, width: int, height: int) -> FaceBox:
    return (
        max(0, int(rect.left())),
        max(0, int(rect.top())),
        min(width, int(rect.right())),
        min(height, int(rect.bottom())),
    )
