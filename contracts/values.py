"""Value objects carried inside events: image claim checks, shot parameters and scores."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from contracts.envelope import Message

Strategy = Literal["instant_reference", "lora", "fine_tune"]
AspectRatio = Literal["1:1", "3:4", "4:3", "2:3", "3:2", "9:16", "16:9"]
ImageContentType = Literal["image/png", "image/jpeg", "image/webp"]
Verdict = Literal["same", "uncertain", "different", "no_face"]
FailureStage = Literal["request", "identity", "generation", "storage", "scoring"]
ProviderName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{1,31}$", description="Provider adapter name")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ImageRef(Message):
    """A claim check: where an image lies in object storage, never the bytes themselves."""

    key: str = Field(min_length=1, max_length=512, description="Object key (content-addressed by sha256).")
    sha256: Sha256
    content_type: ImageContentType
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    size_bytes: int = Field(ge=1)


class ShotParams(Message):
    """What an app asks of one shot."""

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    aspect_ratio: AspectRatio = "1:1"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    steps: int = Field(default=28, ge=1, le=100)
    guidance: float = Field(default=3.5, ge=0.0, le=20.0)
    scenario: str | None = Field(
        default=None, max_length=64, description="Free label for reports, e.g. 'close-up portrait'."
    )


class SimulationNote(Message):
    """Attached to every image the offline simulator makes: it is not model output."""

    simulated: Literal[True] = True
    transform: str = Field(description="What the simulator did to a reference to make this image.")
    drifted: bool = Field(description="True when the simulator swapped in a different person on purpose.")


class FaceScore(Message):
    faces_found: int = Field(ge=0, description="Faces detected in the shot.")
    distance: float | None = Field(
        default=None, description="Smallest L2 distance between the shot's face and any reference face."
    )
    mean_distance: float | None = Field(default=None, description="Mean distance over reference faces.")
    same_below: float = Field(description="Distance under which the face counts as the same person.")
    model: str = Field(description="Face embedding model name.")


class ClipScore(Message):
    image_similarity: float = Field(ge=-1.0, le=1.0, description="Cosine similarity, shot vs references.")
    calibrated: bool = Field(description="False when CLIP runs on random weights: the figure means nothing.")
    model: str


class ShotScore(Message):
    verdict: Verdict
    face: FaceScore | None
    clip: ClipScore
    scorer_version: str
    scoring_ms: float = Field(ge=0.0)
