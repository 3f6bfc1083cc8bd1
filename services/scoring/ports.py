"""What the scorer needs from its models: face, image and (optionally) text embedders.

The real ones (dlib; open_clip's image and text towers) live in `adapters/`; tests use the
hand-written fakes in `tests/fakes.py`. The protocols are synchronous and CPU-bound: the
service runs them in a worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from PIL import Image

from contracts.values import FaceNote

FaceDescriptor = npt.NDArray[np.float32]
"""A 128-d face identity descriptor; L2 distance under ~0.6 means the same person."""

FaceBox = tuple[int, int, int, int]
"""(left, top, right, bottom) in pixels of the image as given (after EXIF orientation)."""


class ScoringModelError(RuntimeError):
    """A scoring model cannot be loaded or used. The message says what to do about it."""


class ModelWeightsUnavailable(ScoringModelError):
    """Model weights are missing, unreadable or cannot be fetched (this service runs offline)."""


@dataclass(frozen=True, eq=False)
class FaceCandidate:
    """One detected face that could be the character."""

    descriptor: FaceDescriptor
    box: FaceBox
    detector_score: float


@dataclass(frozen=True)
class FaceObservation:
    """What a face embedder saw in one image.

    `faces_found` is the detector's count (it may include weak, false detections). `candidates`
    are the detections strong enough to be the character, the primary one (the largest) first,
    at most as many as were asked for; empty exactly when no face was found. `notes` say how the
    faces were found (on an enlarged or a contrast-stretched copy) and whether several candidates were.
    """

    faces_found: int
    candidates: tuple[FaceCandidate, ...] = ()
    notes: tuple[FaceNote, ...] = ()

    def __post_init__(self) -> None:
        if self.faces_found < 0:
            raise ValueError("faces_found cannot be negative")
        if (self.faces_found == 0) != (not self.candidates) or len(self.candidates) > self.faces_found:
            raise ValueError("candidates are given exactly when faces_found > 0, and never more than faces_found")

    @property
    def descriptor(self) -> FaceDescriptor | None:
        """The primary (largest) face's descriptor: the one a reference image stands for."""
        return self.candidates[0].descriptor if self.candidates else None

    @property
    def box(self) -> FaceBox | None:
        return self.candidates[0].box if self.candidates else None


class FaceEmbedder(Protocol):
    """Finds faces in an image and describes their identity."""

    @property
    def model_name(self) -> str:
        """Name recorded in every FaceScore, e.g. 'dlib_face_recognition_resnet_model_v1'."""
        ...

    def observe(self, image: Image.Image, *, max_candidates: int = 1) -> FaceObservation:
        """Detect faces in `image` (any PIL mode); describe up to `max_candidates`, the largest first."""
        ...


@runtime_checkable
class BackgroundFaceEmbedder(FaceEmbedder, Protocol):
    """A face embedder that works elsewhere (another process), so the caller can run CLIP meanwhile."""

    def observe_all(self, images: Sequence[Image.Image], *, max_candidates: int = 1) -> Future[list[FaceObservation]]:
        """Start observing `images`; the future holds one observation per image, in order."""
        ...


class ImageEmbedder(Protocol):
    """Embeds whole images (CLIP-style) for a coarse, identity-agnostic similarity."""

    @property
    def model_name(self) -> str:
        """Name recorded in every ClipScore; says when the weights are random."""
        ...

    @property
    def calibrated(self) -> bool:
        """False when the model runs on random weights: its similarities mean nothing."""
        ...

    def embed(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """Return an (n, d) float32 array of L2-normalised embeddings, one row per image, in order."""
        ...


class TextEmbedder(Protocol):
    """Embeds prompts into the image embedder's space (CLIP's text tower), for prompt adherence."""

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Return an (n, d) float32 array of L2-normalised embeddings, one row per text, in order."""
        ...


class ClipEmbedder(ImageEmbedder, TextEmbedder, Protocol):
    """Both CLIP towers: what the service runs, on torch or on onnxruntime."""
