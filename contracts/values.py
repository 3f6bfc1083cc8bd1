"""Value objects carried inside events: image claim checks, shot parameters and scores."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from contracts.envelope import Message

Strategy = Literal["instant_reference", "lora", "fine_tune"]
AspectRatio = Literal["1:1", "3:4", "4:3", "2:3", "3:2", "9:16", "16:9"]
ImageContentType = Literal["image/png", "image/jpeg", "image/webp"]
Verdict = Literal["same", "uncertain", "different", "no_face"]
TakeReason = Literal["regenerate", "fallback"]
FailureStage = Literal["request", "identity", "generation", "storage", "scoring"]
ProviderName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{1,31}$", description="Provider adapter name")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
HumanAnswer = Literal["yes", "no", "unsure"]
RaterName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@-]*$",
        description="Who voted: a name or id the studio chooses (letters, digits, space . _ @ -).",
    ),
]


class ImageRef(Message):
    """A claim check: where an image lies in object storage, never the bytes themselves."""

    key: str = Field(min_length=1, max_length=512, description="Object key (content-addressed by sha256).")
    sha256: Sha256
    content_type: ImageContentType
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    size_bytes: int = Field(ge=1)


class ArtifactRef(Message):
    """A model artifact (a LoRA's weights) copied into object storage: a claim check, like ImageRef."""

    key: str = Field(min_length=1, max_length=512, description="Object key (content-addressed by sha256).")
    sha256: Sha256
    size_bytes: int = Field(ge=1)
    content_type: str = Field(min_length=1, max_length=200)
    file_name: str = Field(min_length=1, max_length=255, description="The provider's name for the file.")


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


FaceNote = Literal["several_candidates", "upsampled", "contrast_stretched"]
ScoreBasis = Literal["face", "clip_image"]


class FaceScore(Message):
    """Face identity: the shot's chosen face against every reference face and their centroid.

    Distances are L2 between identity descriptors (dlib: under ~0.6 means the same person).
    """

    faces_found: int = Field(ge=0, description="Every detection in the shot, weak ones included.")
    candidates: int = Field(
        ge=0, description="Detections strong enough to be the character; the one closest to the references is chosen."
    )
    notes: list[FaceNote] = Field(
        default_factory=list,
        description="several_candidates: more than one face could be the character; upsampled: the face was "
        "small and found only on an enlarged copy; contrast_stretched: found only on a contrast-stretched copy.",
    )
    references_with_face: int = Field(ge=0, description="Reference images in which a face was found.")
    distance: float | None = Field(
        default=None, description="Best match: the smallest distance from the chosen face to any reference face."
    )
    mean_distance: float | None = Field(default=None, description="Mean distance over the reference faces.")
    max_distance: float | None = Field(default=None, description="Largest distance to any reference face.")
    centroid_distance: float | None = Field(
        default=None, description="Distance to the centroid (mean) of the reference face descriptors."
    )
    same_below: float = Field(description="Distance under which the face counts as the same person.")
    uncertain_below: float = Field(description="Distance under which it counts as uncertain (else different).")
    model: str = Field(description="Face embedding model name.")


class ClipScore(Message):
    image_similarity: float = Field(
        ge=-1.0, le=1.0, description="CLIP-I: cosine between the shot and the references' mean embedding."
    )
    text_similarity: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="CLIP-T, prompt adherence: cosine between the prompt and the shot. None when not computed.",
    )
    calibrated: bool = Field(description="False when CLIP runs on random weights: the figures mean nothing.")
    model: str


class ShotScore(Message):
    verdict: Verdict
    basis: ScoreBasis = Field(
        description="What the verdict rests on: face identity, or CLIP image similarity alone for a character "
        "whose references show no human face (creatures, robots, cartoons)."
    )
    reason: str = Field(description="The verdict in one sentence, with the numbers behind it.")
    face: FaceScore | None = Field(description="None when the references show no face.")
    clip: ClipScore
    scorer_version: str = Field(description="The scoring code's version, e.g. scoring-2.")
    scorer_key: str = Field(
        pattern=r"^[a-z0-9-]{1,64}$",
        description="Scorer version plus a digest of its models and thresholds: one score per shot per key.",
    )
    calibration_profile: str | None = Field(
        description="The calibration profile whose thresholds were used; None: thresholds from settings."
    )
    scoring_ms: float = Field(ge=0.0)
