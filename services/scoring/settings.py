from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ScoringSettings(BaseSettings):
    """Env prefix LIKENESS_SCORING_."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_SCORING_", extra="ignore")

    clip_model: str = "ViT-B-32"
    clip_weights: str | None = Field(
        default=None,
        description="A checkpoint file path or an open_clip hub tag. Unset: random weights, scores uncalibrated.",
    )
    clip_precision: Literal["float32", "bfloat16", "auto"] = Field(
        default="auto", description="auto: bfloat16 where the CPU has native bfloat16, else float32."
    )
    offline: bool = Field(default=True, description="Never reach a model hub (fail fast instead of hanging).")
    face_same_below: float = Field(default=0.6, gt=0, description="dlib L2 distance under which faces match.")
    face_uncertain_below: float = Field(default=0.6, gt=0, description="Upper end of the 'uncertain' band.")
    face_jitters: int = Field(default=1, ge=1)
    calibration_profile: Path | None = Field(
        default=None,
        description="A profile saved by `likeness calibrate --save`; its thresholds replace the two above.",
    )
    torch_threads: int | None = Field(default=None, ge=1)
