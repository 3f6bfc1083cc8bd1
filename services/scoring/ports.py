"""What the scorer needs from its models: a face embedder and an image embedder.

The real ones (dlib, open_clip) live in `adapters/`; tests use the hand-written fakes in
`tests/fakes.py`. Both protocols are synchronous and CPU-bound: the service runs them in a
worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

FaceDescriptor = npt.NDArray[np.float32]
"""A 128-d face identity descriptor; L2 distance under ~0.6 means the same person."""

FaceBox = tuple[int, int, int, int]
"""(left, top, right, bottom) in pixels of the image as given (after EXIF orientation)."""


class ScoringModelError(RuntimeError):
    """A scoring model cannot be loaded or used. The message says what to do about it."""


class ModelWeightsUnavailable(ScoringModelError):
    """Model weights are missing, unreadable or cannot be fetched (this service runs offline)."""


@dataclass(frozen=True)
class FaceObservation:
    """What a face embedder saw in one image.

    `faces_found` is the detector's count (it may include false detections); `descriptor` and
    `box` belong to the one face chosen (the largest), and are None when no face was found.
    """

    faces_found: int
    descriptor: FaceDescriptor | None
    box: FaceBox | None

    def __post_init__(self) -> None:
        if self.faces_found < 0:
            raise ValueError("faces_found cannot be negative")
        if (self.descriptor is None) != (self.box is None) or (self.descriptor is None) != (self.faces_found == 0):
            raise ValueError("descriptor and box are given exactly when faces_found > 0")


class FaceEmbedder(Protocol):
    """Finds the largest face in an image and describes its identity."""

    @property
    def model_name(self) -> str:
        """Name recorded in every FaceScore, e.g. 'dlib_face_recognition_resnet_model_v1'."""
        ...

    def observe(self, image: Image.Image) -> FaceObservation:
        """Detect faces in `image` (any PIL mode) and describe the largest one."""
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
