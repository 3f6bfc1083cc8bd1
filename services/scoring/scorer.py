"""How a shot is scored against a character's references: pure logic over two model ports.

Verdict rules (scorer version `scoring-1`):

1. The references show no face at all (none of them): `face` is None and the verdict is
   "uncertain". Judging identity from CLIP alone is a later issue; the shot's face is not
   even looked for.
2. The shot shows no face: "no_face".
3. Otherwise `distance` is the smallest L2 distance between the shot's face descriptor and any
   reference descriptor (`mean_distance` is the mean over them):
   distance < face_same_below -> "same"; < face_uncertain_below -> "uncertain"; else "different".

CLIP (`ClipScore.image_similarity`, the cosine between the shot's embedding and the normalised
mean of the references' embeddings) is reported but never changes the verdict in scoring-1:
with random weights (`calibrated=False`) it means nothing, and no threshold has been
calibrated for real weights yet.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from contracts import ClipScore, FaceScore, ShotScore, Verdict
from services.scoring.ports import (
    FaceDescriptor,
    FaceEmbedder,
    FaceObservation,
    ImageEmbedder,
    ScoringModelError,
)

SCORER_VERSION = "scoring-1"
_BLOB_FORMAT = "likeness.reference_embeddings.v1"


class StaleReferenceEmbeddings(ScoringModelError):
    """Cached reference embeddings were made by other models than the scorer's own."""


@dataclass(frozen=True)
class ScoringThresholds:
    """Face-distance thresholds. The uncertain band is [face_same_below, face_uncertain_below);
    equal values (the default, dlib's published 0.6) mean there is no band."""

    face_same_below: float = 0.6
    face_uncertain_below: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 < self.face_same_below <= self.face_uncertain_below:
            raise ValueError(
                "thresholds must satisfy 0 < face_same_below <= face_uncertain_below, got "
                f"{self.face_same_below} and {self.face_uncertain_below}"
            )


@dataclass(frozen=True, eq=False)
class ReferenceEmbeddings:
    """What a character's reference images boil down to; cached once per character.

    `face_descriptors` holds one descriptor per reference in which a face was found (possibly
    none); `clip_mean` is the mean of the references' L2-normalised image embeddings (not itself
    normalised). `face_model` and `image_model` name the models that made them, so a cached copy
    made by other models is refused rather than silently compared across embedding spaces.
    """

    face_descriptors: list[FaceDescriptor]
    clip_mean: npt.NDArray[np.float32]
    face_model: str
    image_model: str

    def __post_init__(self) -> None:
        shapes = {(d.shape, d.dtype) for d in self.face_descriptors}
        if len(shapes) > 1 or any(d.ndim != 1 for d in self.face_descriptors):
            raise ValueError("face descriptors must be 1-d arrays of one shape and dtype")
        if self.clip_mean.ndim != 1:
            raise ValueError("clip_mean must be a 1-d array")

    def to_bytes(self) -> bytes:
        """An .npz blob (no pickle) that `from_bytes` turns back into an equal object."""
        no_faces = np.zeros((0, 0), dtype=np.float32)
        descriptors = np.stack(self.face_descriptors) if self.face_descriptors else no_faces
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(_BLOB_FORMAT),
            face_descriptors=descriptors,
            clip_mean=self.clip_mean,
            face_model=np.array(self.face_model),
            image_model=np.array(self.image_model),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> ReferenceEmbeddings:
        """Read a `to_bytes` blob. Raises ValueError for anything else: re-embed the references."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
                blob_format = str(archive["format"])
                if blob_format != _BLOB_FORMAT:
                    raise ValueError(f"unknown reference-embeddings format {blob_format!r}")
                descriptors = archive["face_descriptors"]
                return cls(
                    face_descriptors=[row.copy() for row in descriptors],
                    clip_mean=archive["clip_mean"],
                    face_model=str(archive["face_model"]),
                    image_model=str(archive["image_model"]),
                )
        except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"not a reference-embeddings blob: {error}") from error

    def __eq__(self, other: object) -> bool:
        """Exact equality: same models, and arrays with the same dtype, shape and bytes."""
        if not isinstance(other, ReferenceEmbeddings):
            return NotImplemented
        return (
            self.face_model == other.face_model
            and self.image_model == other.image_model
            and len(self.face_descriptors) == len(other.face_descriptors)
            and all(_identical(a, b) for a, b in zip(self.face_descriptors, other.face_descriptors, strict=True))
            and _identical(self.clip_mean, other.clip_mean)
        )

    __hash__ = None  # type: ignore[assignment]


class Scorer:
    """Scores shots against reference embeddings. Synchronous and CPU-bound: run it in a thread."""

    def __init__(
        self,
        face: FaceEmbedder,
        images: ImageEmbedder,
        thresholds: ScoringThresholds | None = None,
    ) -> None:
        self._face = face
        self._images = images
        self._thresholds = thresholds if thresholds is not None else ScoringThresholds()

    @property
    def thresholds(self) -> ScoringThresholds:
        return self._thresholds

    def embed_references(self, images: Sequence[Image.Image]) -> ReferenceEmbeddings:
        """Describe a character's reference images; faceless ones count for CLIP only."""
        if not images:
            raise ValueError("a character needs at least one reference image")
        descriptors = [
            observation.descriptor
            for observation in (self._face.observe(image) for image in images)
            if observation.descriptor is not None
        ]
        embeddings = self._images.embed(images)
        return ReferenceEmbeddings(
            face_descriptors=descriptors,
            clip_mean=embeddings.mean(axis=0, dtype=np.float64).astype(np.float32),
            face_model=self._face.model_name,
            image_model=self._images.model_name,
        )

    @property
    def embedding_version(self) -> str:
        """Scorer version and both model names: a cache key under which reference embeddings stay valid."""
        return f"{SCORER_VERSION}; {self._face.model_name}; {self._images.model_name}"

    def is_current(self, references: ReferenceEmbeddings) -> bool:
        """True when `references` were made by this scorer's models (a cached copy may not be)."""
        return references.face_model == self._face.model_name and references.image_model == self._images.model_name

    def score(self, shot: Image.Image, references: ReferenceEmbeddings) -> ShotScore:
        return self.score_batch([shot], references)[0]

    def score_batch(self, shots: Sequence[Image.Image], references: ReferenceEmbeddings) -> list[ShotScore]:
        """Score shots in order, embedding them with CLIP in one batch.

        Each score's `scoring_ms` is its own face time plus an equal share of the batch's CLIP time.
        """
        if not self.is_current(references):
            raise StaleReferenceEmbeddings(
                f"reference embeddings were made by ({references.face_model}; {references.image_model}) "
                f"but this scorer runs ({self._face.model_name}; {self._images.model_name}): "
                "embed the references again and replace the cached copy"
            )
        if not shots:
            return []
        started = time.perf_counter()
        embeddings = self._images.embed(shots)
        clip_share_ms = (time.perf_counter() - started) * 1000.0 / len(shots)
        clip_scores = [self._clip_score(embedding, references) for embedding in embeddings]

        scores = []
        for shot, clip in zip(shots, clip_scores, strict=True):
            started = time.perf_counter()
            face, verdict = self._face_score(shot, references)
            face_ms = (time.perf_counter() - started) * 1000.0
            scores.append(
                ShotScore(
                    verdict=verdict,
                    face=face,
                    clip=clip,
                    scorer_version=SCORER_VERSION,
                    scoring_ms=face_ms + clip_share_ms,
                )
            )
        return scores

    def _face_score(self, shot: Image.Image, references: ReferenceEmbeddings) -> tuple[FaceScore | None, Verdict]:
        if not references.face_descriptors:
            return None, "uncertain"
        observation = self._face.observe(shot)
        distances = identity_distances(observation, references.face_descriptors)
        if distances is None:
            distance = mean_distance = None
        else:
            distance, mean_distance = float(distances.min()), float(distances.mean())
        face = FaceScore(
            faces_found=observation.faces_found,
            distance=distance,
            mean_distance=mean_distance,
            same_below=self._thresholds.face_same_below,
            model=self._face.model_name,
        )
        return face, face_verdict(distance, self._thresholds)

    def _clip_score(self, embedding: npt.NDArray[np.float32], references: ReferenceEmbeddings) -> ClipScore:
        return ClipScore(
            image_similarity=cosine_similarity(embedding, references.clip_mean),
            calibrated=self._images.calibrated,
            model=self._images.model_name,
        )


def identity_distances(
    observation: FaceObservation, reference_descriptors: Sequence[FaceDescriptor]
) -> npt.NDArray[np.float64] | None:
    """L2 distance from the observed face to each reference face; None when no face was observed."""
    if observation.descriptor is None or not reference_descriptors:
        return None
    stacked = np.stack(reference_descriptors).astype(np.float64)
    return np.asarray(np.linalg.norm(stacked - observation.descriptor.astype(np.float64), axis=1), dtype=np.float64)


def face_verdict(distance: float | None, thresholds: ScoringThresholds) -> Verdict:
    """The verdict for a shot whose references show a face; `distance` None means the shot shows none."""
    if distance is None:
        return "no_face"
    if distance < thresholds.face_same_below:
        return "same"
    if distance < thresholds.face_uncertain_below:
        return "uncertain"
    return "different"


def cosine_similarity(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    """Cosine of the angle between two vectors, clamped to [-1, 1]; 0.0 when either is zero."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = float(np.linalg.norm(a64)) * float(np.linalg.norm(b64))
    if norms == 0.0 or not np.isfinite(norms):
        return 0.0
    return float(np.clip(float(a64 @ b64) / norms, -1.0, 1.0))


def _identical(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
