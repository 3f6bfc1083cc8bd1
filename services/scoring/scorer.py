"""How a shot is scored against a character's references: pure logic over the model ports.

Verdict rules (scorer version `scoring-2`):

1. The references show a face (at least one of them): identity rests on the face (`basis` "face").
   - The shot shows no face: "no_face".
   - Otherwise every confident face in the shot is a candidate, and the one closest to the
     references (smallest distance to any reference face) is taken as the character; the score
     says how many candidates there were. `distance` is that smallest L2 distance (the best
     match); `mean_distance`, `max_distance` and `centroid_distance` (to the mean reference
     descriptor) are reported beside it.
     distance < face_same_below -> "same"; < face_uncertain_below -> "uncertain"; else "different".
2. No reference shows a face (a creature, a robot, a cartoon): identity rests on CLIP image
   similarity alone (`basis` "clip_image"), and the reason says so. With random weights
   (`calibrated=False`) CLIP-I means nothing, so the verdict is "uncertain". Otherwise
   similarity >= clip_same_above -> "same"; >= clip_uncertain_above -> "uncertain"; else "different".

CLIP-I (the cosine between the shot's embedding and the mean of the references' embeddings) and
CLIP-T (the cosine between the prompt and the shot: prompt adherence) are reported for every
shot; with a face to go by they never change the verdict.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from contracts import ClipScore, FaceScore, ShotScore, Verdict
from contracts.values import FaceNote, ScoreBasis
from services.scoring.ports import (
    BackgroundFaceEmbedder,
    FaceDescriptor,
    FaceEmbedder,
    FaceObservation,
    ImageEmbedder,
    ScoringModelError,
    TextEmbedder,
)

SCORER_VERSION = "scoring-2"
DEFAULT_MAX_FACE_CANDIDATES = 5
_BLOB_FORMAT = "likeness.reference_embeddings.v1"


class StaleReferenceEmbeddings(ScoringModelError):
    """Cached reference embeddings were made by other models than the scorer's own."""


@dataclass(frozen=True)
class ScoringThresholds:
    """Verdict thresholds.

    Face distance: the uncertain band is [face_same_below, face_uncertain_below); equal values
    (the default, dlib's published 0.6) mean there is no band. CLIP image similarity, used only
    for characters without a face: the uncertain band is [clip_uncertain_above, clip_same_above).
    The CLIP defaults are not calibrated: DreamBooth reports 0.885 CLIP-I between real photos of
    one subject (ViT-S/16 DINO aside); set them from your own labelled pairs.
    """

    face_same_below: float = 0.6
    face_uncertain_below: float = 0.6
    clip_same_above: float = 0.85
    clip_uncertain_above: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 < self.face_same_below <= self.face_uncertain_below:
            raise ValueError(
                "thresholds must satisfy 0 < face_same_below <= face_uncertain_below, got "
                f"{self.face_same_below} and {self.face_uncertain_below}"
            )
        if not -1.0 <= self.clip_uncertain_above <= self.clip_same_above <= 1.0:
            raise ValueError(
                "thresholds must satisfy -1 <= clip_uncertain_above <= clip_same_above <= 1, got "
                f"{self.clip_uncertain_above} and {self.clip_same_above}"
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


@dataclass(frozen=True)
class ShotToScore:
    """One shot, the character's reference embeddings and the prompt it was made from."""

    image: Image.Image
    references: ReferenceEmbeddings
    prompt: str | None = None


class Scorer:
    """Scores shots against reference embeddings. Synchronous and CPU-bound: run it in a thread.

    `texts` (CLIP's text tower) enables prompt adherence; without it `text_similarity` is None.
    `calibration_profile` names the profile `thresholds` came from, for the record.
    """

    def __init__(
        self,
        face: FaceEmbedder,
        images: ImageEmbedder,
        thresholds: ScoringThresholds | None = None,
        *,
        texts: TextEmbedder | None = None,
        calibration_profile: str | None = None,
        max_face_candidates: int = DEFAULT_MAX_FACE_CANDIDATES,
    ) -> None:
        if max_face_candidates < 1:
            raise ValueError("max_face_candidates must be >= 1")
        self._face = face
        self._images = images
        self._texts = texts
        self._thresholds = thresholds if thresholds is not None else ScoringThresholds()
        self._calibration_profile = calibration_profile
        self._max_face_candidates = max_face_candidates
        self._key = scorer_key(
            face_model=face.model_name,
            image_model=images.model_name,
            prompt_adherence=texts is not None,
            thresholds=self._thresholds,
            calibration_profile=calibration_profile,
            max_face_candidates=max_face_candidates,
        )

    @property
    def thresholds(self) -> ScoringThresholds:
        return self._thresholds

    @property
    def face_embedder(self) -> FaceEmbedder:
        return self._face

    @property
    def image_embedder(self) -> ImageEmbedder:
        return self._images

    @property
    def key(self) -> str:
        """Scorer version plus a digest of everything that changes a score: one score per shot per key."""
        return self._key

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

    def score(self, shot: Image.Image, references: ReferenceEmbeddings, prompt: str | None = None) -> ShotScore:
        return self.score_batch([ShotToScore(shot, references, prompt)])[0]

    def score_batch(self, shots: Sequence[ShotToScore]) -> list[ShotScore]:
        """Score shots in order (of any characters), embedding images and prompts with CLIP in one batch each.

        A face embedder that works in the background (`ports.BackgroundFaceEmbedder`) finds the
        shots' faces while CLIP runs. Each score's `scoring_ms` is an equal share of the batch's time.
        """
        for shot in shots:
            self._check_current(shot.references)
        if not shots:
            return []
        started = time.perf_counter()
        with_faces = [index for index, shot in enumerate(shots) if shot.references.face_descriptors]
        observations = self._observe([shots[index].image for index in with_faces])
        embeddings = self._images.embed([shot.image for shot in shots])
        text_similarities = self._text_similarities(shots, embeddings)
        observed = dict(zip(with_faces, observations(), strict=True))

        scores = []
        for index, (shot, embedding, text_similarity) in enumerate(
            zip(shots, embeddings, text_similarities, strict=True)
        ):
            observation = observed.get(index)
            face = None if observation is None else self._face_score(observation, shot.references)
            clip = ClipScore(
                image_similarity=cosine_similarity(embedding, shot.references.clip_mean),
                text_similarity=text_similarity,
                calibrated=self._images.calibrated,
                model=self._images.model_name,
            )
            verdict, basis, reason = judge(face, clip, self._thresholds)
            scores.append(
                ShotScore(
                    verdict=verdict,
                    basis=basis,
                    reason=reason,
                    face=face,
                    clip=clip,
                    scorer_version=SCORER_VERSION,
                    scorer_key=self._key,
                    calibration_profile=self._calibration_profile,
                    scoring_ms=0.0,
                )
            )
        share_ms = (time.perf_counter() - started) * 1000.0 / len(shots)
        return [score.model_copy(update={"scoring_ms": share_ms}) for score in scores]

    def _observe(self, images: list[Image.Image]) -> Callable[[], list[FaceObservation]]:
        """Start finding faces; the returned function waits for them (or finds them, one by one, now)."""
        if isinstance(self._face, BackgroundFaceEmbedder):
            return self._face.observe_all(images, max_candidates=self._max_face_candidates).result
        return lambda: [self._face.observe(image, max_candidates=self._max_face_candidates) for image in images]

    def _check_current(self, references: ReferenceEmbeddings) -> None:
        if not self.is_current(references):
            raise StaleReferenceEmbeddings(
                f"reference embeddings were made by ({references.face_model}; {references.image_model}) "
                f"but this scorer runs ({self._face.model_name}; {self._images.model_name}): "
                "embed the references again and replace the cached copy"
            )

    def _text_similarities(
        self, shots: Sequence[ShotToScore], embeddings: npt.NDArray[np.float32]
    ) -> list[float | None]:
        prompted = [index for index, shot in enumerate(shots) if shot.prompt]
        similarities: list[float | None] = [None] * len(shots)
        if self._texts is None or not prompted:
            return similarities
        texts = self._texts.embed_texts([shots[index].prompt or "" for index in prompted])
        for index, text in zip(prompted, texts, strict=True):
            similarities[index] = cosine_similarity(embeddings[index], text)
        return similarities

    def _face_score(self, observation: FaceObservation, references: ReferenceEmbeddings) -> FaceScore:
        notes: list[FaceNote] = list(observation.notes)
        if len(observation.candidates) > 1 and "several_candidates" not in notes:
            notes.append("several_candidates")
        stacked = np.stack(references.face_descriptors).astype(np.float64)
        distances = [_distances(candidate.descriptor, stacked) for candidate in observation.candidates]
        best = min(range(len(distances)), key=lambda index: float(distances[index].min()), default=None)
        chosen = None if best is None else distances[best]
        closest = None if best is None else observation.candidates[best].descriptor
        centroid = stacked.mean(axis=0)
        return FaceScore(
            faces_found=observation.faces_found,
            candidates=len(observation.candidates),
            notes=notes,
            references_with_face=len(references.face_descriptors),
            distance=None if chosen is None else float(chosen.min()),
            mean_distance=None if chosen is None else float(chosen.mean()),
            max_distance=None if chosen is None else float(chosen.max()),
            centroid_distance=None if closest is None else float(_distances(closest, centroid[None, :])[0]),
            same_below=self._thresholds.face_same_below,
            uncertain_below=self._thresholds.face_uncertain_below,
            model=self._face.model_name,
        )


def scorer_key(
    *,
    face_model: str,
    image_model: str,
    prompt_adherence: bool,
    thresholds: ScoringThresholds,
    calibration_profile: str | None,
    max_face_candidates: int,
) -> str:
    """`scoring-2-<12 hex>`: the version plus a digest of everything else that can change a score."""
    settings = {
        "face_model": face_model,
        "image_model": image_model,
        "prompt_adherence": prompt_adherence,
        "thresholds": asdict(thresholds),
        "calibration_profile": calibration_profile,
        "max_face_candidates": max_face_candidates,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{SCORER_VERSION}-{digest}"


def judge(face: FaceScore | None, clip: ClipScore, thresholds: ScoringThresholds) -> tuple[Verdict, ScoreBasis, str]:
    """The verdict, what it rests on and why, in one sentence a person can check."""
    if face is None:
        return clip_verdict(clip, thresholds)
    verdict = face_verdict(face.distance, thresholds)
    if face.distance is None:
        return verdict, "face", "no face found in the shot, though the references show one"
    several = f" (the closest of {face.candidates} faces)" if face.candidates > 1 else ""
    if verdict == "same":
        rule = f"under {thresholds.face_same_below:.2f}"
    elif verdict == "uncertain":
        rule = f"between {thresholds.face_same_below:.2f} and {thresholds.face_uncertain_below:.2f}"
    else:
        rule = f"at or over {thresholds.face_uncertain_below:.2f}"
    return verdict, "face", f"face distance {face.distance:.3f}{several} to the nearest reference is {rule}: {verdict}"


def clip_verdict(clip: ClipScore, thresholds: ScoringThresholds) -> tuple[Verdict, ScoreBasis, str]:
    """The verdict for a character whose references show no face: CLIP image similarity alone."""
    similarity = clip.image_similarity
    prefix = f"no face in the references, so CLIP image similarity alone: {similarity:.3f}"
    if not clip.calibrated:
        return "uncertain", "clip_image", f"{prefix}, from random weights, which cannot tell identities apart"
    if similarity >= thresholds.clip_same_above:
        return "same", "clip_image", f"{prefix} is at or over {thresholds.clip_same_above:.2f}: same"
    if similarity >= thresholds.clip_uncertain_above:
        band = f"{thresholds.clip_uncertain_above:.2f} and {thresholds.clip_same_above:.2f}"
        return "uncertain", "clip_image", f"{prefix} is between {band}: uncertain"
    return "different", "clip_image", f"{prefix} is under {thresholds.clip_uncertain_above:.2f}: different"


def _distances(descriptor: npt.NDArray[np.floating], references: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """L2 distance from one descriptor to each row of `references`."""
    return np.asarray(np.linalg.norm(references - descriptor.astype(np.float64), axis=1), dtype=np.float64)


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
