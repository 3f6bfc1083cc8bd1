"""Face identity with ArcFace: dlib's HOG detector, 68 landmarks, a 112x112 aligned crop, an ONNX model.

Detection is the dlib backend's own `HogFaces` (same fallbacks, same ranking, same notes). Each
ranked face is aligned the way insightface aligns faces for its recognition models (a similarity
transform putting eyes, nose tip and mouth corners on a fixed template), and the ONNX model
(insightface's w600k_r50 or glint360k models, or any with the same contract) describes it. The
weights are loaded by file path only: nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import dlib
import numpy as np
import numpy.typing as npt
import onnxruntime  # type: ignore[import-untyped]
from PIL import Image

from services.scoring.adapters.face import HogFaces, Pixels, _model_file, default_models_dir
from services.scoring.adapters.rgb import to_rgb_array
from services.scoring.ports import FaceCandidate, FaceObservation, ModelWeightsUnavailable, ScoringModelError

LANDMARKS_68_FILE = "shape_predictor_68_face_landmarks.dat"
WEIGHTS_ENV = "LIKENESS_SCORING_ARCFACE_WEIGHTS"

ALIGNED_SIZE = 112
ARCFACE_TEMPLATE: npt.NDArray[np.float64] = np.array(
    [
        [38.2946, 51.6963],  # the eye on the image's left (the subject's right eye)
        [73.5318, 51.5014],  # the eye on the image's right
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # mouth corner on the image's left
        [70.7299, 92.2041],  # mouth corner on the image's right
    ]
)
"""insightface's `arcface_dst`: where the five points lie in a 112x112 crop (pixel centres at integers)."""

# dlib's 68-point layout (iBUG 300-W), counted from 0: the eye contours, the nose tip, the mouth corners.
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT = 48
_MOUTH_RIGHT = 54

_PIXEL_OFFSET = 127.5  # insightface's recognition models take (x - 127.5) / 127.5, RGB
_PIXEL_SCALE = 127.5
_HASH_CHUNK = 1 << 20

Points = npt.NDArray[np.float64]


class ArcFaceEmbedder:
    """Finds faces with dlib's HOG detector and describes them with an ArcFace ONNX model, the largest first.

    Detection, its fallbacks (upsample, then a contrast-stretched copy, which is then also what
    gets aligned) and the ranking are the dlib backend's. The descriptor is the model's output,
    L2-normalised float32 (512-d for insightface's models; the size is read from the model).

    Distances: the scorer compares descriptors by L2 distance. For unit vectors that is
    sqrt(2 - 2 cos), a different scale from dlib's (whose default threshold 0.6 means nothing
    here): a published ArcFace verification threshold of about 0.3-0.4 cosine similarity is an
    L2 distance of about 1.18-1.10. The thresholds for this model must come from
    `likeness calibrate --save NAME` run with this model (calibration profiles are per face
    model: the model name below includes the weights' digest, so other weights need their own
    profile). Models load once, here. Calls are serialised by a lock.
    """

    def __init__(
        self,
        weights: Path,
        *,
        threads: int | None = None,
        max_upsample: int = 1,
        models_dir: Path | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1 (or None: onnxruntime's default)")
        self._weights = Path(weights)
        self._digest = _sha256(self._weights)  # also proves the file is there and readable
        directory = models_dir if models_dir is not None else default_models_dir()
        self._faces = HogFaces(max_upsample=max_upsample)
        self._landmarks: Any = dlib.shape_predictor(_model_file(directory, LANDMARKS_68_FILE))
        self._session: Any = _session(self._weights, threads)
        self._input_name, self._batch_of_one = _checked_input(self._session, self._weights)
        self._output_name: str = self._session.get_outputs()[0].name
        self.embedding_size = int(self._embed([np.zeros((ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)]).shape[1])
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return f"arcface onnx {self._weights.name} sha256:{self._digest[:12]} (HOG detector)"

    def observe(self, image: Image.Image, *, max_candidates: int = 1) -> FaceObservation:
        if max_candidates < 1:
            raise ValueError("max_candidates must be >= 1")
        with self._lock:
            found = self._faces.find(to_rgb_array(image))
            if found is None:
                return FaceObservation(faces_found=0)
            chosen = found.ranked[:max_candidates]
            landmarks = [five_points(self._landmarks(found.pixels, rect)) for rect, _ in chosen]
            descriptors = self._embed([aligned_face(found.pixels, points) for points in landmarks])
        candidates = tuple(
            FaceCandidate(descriptor, found.box(rect), score)
            for descriptor, (rect, score) in zip(descriptors, chosen, strict=True)
        )
        return FaceObservation(faces_found=found.faces_found, candidates=candidates, notes=found.notes)

    def _embed(self, crops: list[Pixels]) -> npt.NDArray[np.float32]:
        """One L2-normalised float32 row per 112x112 RGB crop."""
        batch = (np.stack(crops).astype(np.float32) - _PIXEL_OFFSET) / _PIXEL_SCALE
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # NHWC -> NCHW
        raw: npt.NDArray[np.float32]
        if self._batch_of_one:
            outputs = [self._session.run([self._output_name], {self._input_name: row[None]})[0] for row in batch]
            raw = np.concatenate([np.asarray(o, dtype=np.float32).reshape(1, -1) for o in outputs])
        else:
            (output,) = self._session.run([self._output_name], {self._input_name: batch})
            raw = np.asarray(output, dtype=np.float32).reshape(len(crops), -1)
        norms: npt.NDArray[np.float32] = np.linalg.norm(raw, axis=1, keepdims=True)
        if not (np.isfinite(norms).all() and (norms > 0).all()):
            raise ScoringModelError(f"the ArcFace model {self._weights} gave a zero or non-finite embedding")
        normalised: npt.NDArray[np.float32] = (raw / norms).astype(np.float32)
        return normalised


def five_points(shape: Any) -> Points:
    """ArcFace's five points from dlib's 68 landmarks: eye centres, nose tip, mouth corners (5x2, x then y)."""
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks, got {len(points)}")
    return np.stack(
        [
            points[_LEFT_EYE].mean(axis=0),
            points[_RIGHT_EYE].mean(axis=0),
            points[_NOSE_TIP],
            points[_MOUTH_LEFT],
            points[_MOUTH_RIGHT],
        ]
    )


def similarity_transform(source: Points, target: Points) -> Points:
    """The 2x3 similarity (rotation, uniform scale, shift; no reflection) taking `source` closest to `target`.

    Umeyama's least-squares estimate, as skimage's SimilarityTransform (which insightface uses).
    """
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError("source and target must both be (n, 2) arrays")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = float((source_centred**2).sum(axis=1).mean())
    if source_variance < 1e-12:
        raise ValueError("the source points all coincide: no transform fits them")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    scale = float(singular @ signs) / source_variance
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def aligned_face(pixels: Pixels, points: Points) -> Pixels:
    """The 112x112 RGB crop with `points` (five_points' order) moved onto ARCFACE_TEMPLATE; black outside."""
    matrix = similarity_transform(points, ARCFACE_TEMPLATE)
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    # PIL samples output pixel (x, y) at its centre (x + 0.5, y + 0.5) and reads the input in the same
    # half-pixel-shifted frame; the landmarks and the template count pixel centres at integers (as
    # OpenCV's warpAffine, which insightface uses), so shift into and out of that frame.
    (a, b, c), (d, e, f) = inverse
    coefficients = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    warped = Image.fromarray(pixels).transform(
        (ALIGNED_SIZE, ALIGNED_SIZE), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise ModelWeightsUnavailable(
            f"The ArcFace weights {path} cannot be read ({error.strerror or error}): put an ArcFace ONNX model "
            f"there, e.g. w600k_r50.onnx from insightface's buffalo_l model pack, or point {WEIGHTS_ENV} at one. "
            "This service never downloads weights."
        ) from error
    return digest.hexdigest()


def _session(path: Path, threads: int | None) -> Any:
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for a corrupt or foreign file
        raise ModelWeightsUnavailable(
            f"onnxruntime cannot load {path} as an ONNX model ({error}): {WEIGHTS_ENV} must point at an ArcFace "
            "ONNX file, e.g. w600k_r50.onnx from insightface's buffalo_l model pack."
        ) from error


def _checked_input(session: Any, path: Path) -> tuple[str, bool]:
    """The model's input name, and whether its batch size is fixed at 1; fails unless it takes Nx3x112x112 floats."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ScoringModelError(f"{path} has {len(inputs)} inputs; an ArcFace model takes one image tensor")
    (model_input,) = inputs
    shape = list(model_input.shape)
    if model_input.type != "tensor(float)" or len(shape) != 4 or shape[1:] != [3, ALIGNED_SIZE, ALIGNED_SIZE]:
        raise ScoringModelError(
            f"{path} takes {model_input.type} of shape {shape}, not the Nx3x112x112 float image an ArcFace model "
            "takes (RGB, NCHW): is it a recognition model (insightface's w600k_r50.onnx), not a detector?"
        )
    batch = shape[0]
    if isinstance(batch, int) and batch != 1:
        raise ScoringModelError(f"{path} takes batches of exactly {batch} images; use a model with batch 1 or dynamic")
    return str(model_input.name), batch == 1
