from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache() -> Path:
    """Where CLIP's ONNX exports are kept: $XDG_CACHE_HOME/likeness/clip-onnx, else ~/.cache/likeness/clip-onnx."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "likeness" / "clip-onnx"


class ScoringSettings(BaseSettings):
    """Env prefix LIKENESS_SCORING_."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_SCORING_", extra="ignore")

    clip_model: str = "ViT-B-32"
    clip_weights: str | None = Field(
        default=None,
        description="A checkpoint file path or an open_clip hub tag. Unset: random weights, scores uncalibrated.",
    )
    clip_runtime: Literal["onnx", "torch"] = Field(
        default="onnx",
        description="onnx: open_clip's towers exported once (by a child process) and run by onnxruntime in float32; "
        "the worker never imports torch (~500-800 MB less resident). torch: open_clip itself, in clip_precision.",
    )
    clip_cache: Path = Field(
        default_factory=default_cache,
        description="Where ONNX exports are kept (~600 MB for ViT-B-32), one directory per model and weights.",
    )
    clip_precision: Literal["float32", "bfloat16", "int8", "auto"] = Field(
        default="auto",
        description="auto: float32 on onnx; on torch bfloat16 where the CPU has it natively, else float32. "
        "int8 (onnx only): ~2.6x faster CLIP, a quarter of the memory, embeddings drift slightly (recorded at export). "
        "bfloat16: torch only.",
    )
    offline: bool = Field(default=True, description="Never reach a model hub (fail fast instead of hanging).")
    face_same_below: float = Field(default=0.6, gt=0, description="dlib L2 distance under which faces match.")
    face_uncertain_below: float = Field(default=0.6, gt=0, description="Upper end of the 'uncertain' band.")
    face_jitters: int = Field(default=1, ge=1)
    face_backend: Literal["dlib", "arcface"] = Field(
        default="dlib",
        description="dlib: its ResNet (128-d). arcface: an ONNX ArcFace model from arcface_weights (512-d), run "
        "in-process (face_process applies to dlib only). Same HOG detector; thresholds from a calibration profile.",
    )
    arcface_weights: Path | None = Field(
        default=None,
        description="The ArcFace ONNX file (e.g. insightface buffalo_l's w600k_r50.onnx); never downloaded.",
    )
    face_process: bool = Field(
        default=True,
        description="Run dlib in a child process, so face work overlaps CLIP (dlib holds the GIL); ~110 MB more.",
    )
    max_face_candidates: int = Field(
        default=5, ge=1, description="Faces in a shot compared with the references; the closest one counts."
    )
    clip_same_above: float = Field(
        default=0.85, ge=-1, le=1, description="Faceless characters only: CLIP-I at or over this is 'same'."
    )
    clip_uncertain_above: float = Field(
        default=0.75, ge=-1, le=1, description="Faceless characters only: CLIP-I under this is 'different'."
    )
    prompt_adherence: bool = Field(
        default=True, description="Score CLIP-T (prompt vs shot); needs CLIP's text tower (~125 MB in bfloat16)."
    )
    rescore: Literal["all", "new"] = Field(
        default="all",
        description="When a scorer with a new key (new models, weights or thresholds) starts: 'all' replays every "
        "stored ShotStored event and scores every shot again (old scores are kept); 'new' scores new shots only.",
    )
    batch_size: int = Field(default=8, ge=1, le=64, description="Shots scored together (one CLIP batch).")
    calibration_profile: Path | None = Field(
        default=None,
        description="A profile saved by `likeness calibrate --save`; its thresholds replace the two above.",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="Threads for CLIP (torch or onnxruntime) and ArcFace; unset: the cores left."
    )
