"""The scorer the service runs: models loaded once, CPU work off the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from contracts import ShotScore
from services.scoring.adapters.clip_onnx import OnnxClipEmbedder, exported_clip
from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.adapters.face_process import ProcessFaceEmbedder
from services.scoring.calibration import CalibrationProfile, CalibrationProfileError
from services.scoring.ports import ClipEmbedder, FaceEmbedder, ModelWeightsUnavailable, ScoringModelError
from services.scoring.scorer import ReferenceEmbeddings, Scorer, ScoringThresholds, ShotToScore
from services.scoring.settings import ScoringSettings


class ThreadedScorer:
    """Implements handlers.AsyncScorer. `load()` must run (once) before the first message."""

    def __init__(self, settings: ScoringSettings) -> None:
        self._settings = settings
        self._scorer: Scorer | None = None
        # One thread does all model work: the models already use every core, and one thread keeps
        # one malloc arena (asyncio's default pool would grow several, each holding memory).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring-models")

    def load(self) -> Scorer:
        """Load the models (seconds; blocks), on the model thread. Idempotent."""
        if self._scorer is None:
            self._scorer = self._executor.submit(self._load).result()
        return self._scorer

    def _load(self) -> Scorer:
        return build_scorer(self._settings)

    @property
    def scorer(self) -> Scorer:
        assert self._scorer is not None, "ThreadedScorer.load() was not called"
        return self._scorer

    @property
    def version(self) -> str:
        """The reference-embedding cache key: scorer version and both models' names and weights."""
        return self.scorer.embedding_version

    @property
    def key(self) -> str:
        return self.scorer.key

    async def embed_references(self, images: list[Image.Image]) -> ReferenceEmbeddings:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.scorer.embed_references, images)

    def references_from_bytes(self, data: bytes) -> ReferenceEmbeddings:
        return ReferenceEmbeddings.from_bytes(data)

    async def score_batch(self, shots: Sequence[ShotToScore]) -> list[ShotScore]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.scorer.score_batch, shots)


def build_scorer(settings: ScoringSettings) -> Scorer:
    """The models as settings describe them (seconds to load). With the face process, torch gets one
    core fewer: dlib has its own (measured: 9.1 shots/s against 7.2 with everything in one process)."""
    face = build_face_embedder(settings)
    thresholds, profile = thresholds_from(settings, face_model=face.model_name)  # fails before CLIP's slow load
    threads = settings.torch_threads
    if threads is None and isinstance(face, ProcessFaceEmbedder):
        threads = max(1, len(os.sched_getaffinity(0)) - 1)
    images = build_clip_embedder(settings, threads=threads)
    return Scorer(
        face,
        images,
        thresholds,
        texts=images if settings.prompt_adherence else None,
        calibration_profile=profile,
        max_face_candidates=settings.max_face_candidates,
    )


def build_clip_embedder(settings: ScoringSettings, *, threads: int | None) -> ClipEmbedder:
    """CLIP as settings choose: on onnxruntime (exported first if the cache lacks it), or open_clip in torch."""
    precision = settings.clip_precision
    if settings.clip_runtime == "onnx":
        if precision == "bfloat16":
            raise ScoringModelError(
                "LIKENESS_SCORING_CLIP_PRECISION=bfloat16 needs LIKENESS_SCORING_CLIP_RUNTIME=torch: onnxruntime "
                "runs CLIP in float32 or int8 on a CPU"
            )
        exported = exported_clip(
            settings.clip_model,
            settings.clip_weights,
            cache=settings.clip_cache,
            offline=settings.offline,
            precision="int8" if precision == "int8" else "float32",
        )
        return OnnxClipEmbedder(exported, threads=threads, prompt_adherence=settings.prompt_adherence)
    if precision == "int8":
        raise ScoringModelError(
            "LIKENESS_SCORING_CLIP_PRECISION=int8 needs LIKENESS_SCORING_CLIP_RUNTIME=onnx (the default)"
        )
    from services.scoring.adapters.clip import OpenClipImageEmbedder  # imports torch: only where it is used

    return OpenClipImageEmbedder(
        model_name=settings.clip_model,
        weights=settings.clip_weights,
        offline=settings.offline,
        threads=threads,
        precision=precision,
        prompt_adherence=settings.prompt_adherence,
    )


def build_face_embedder(settings: ScoringSettings) -> FaceEmbedder:
    """The face backend settings choose. ArcFace always runs in this process (face_process is for dlib
    only) and takes torch_threads, where set, as onnxruntime's thread count."""
    if settings.face_backend == "arcface":
        from services.scoring.adapters.arcface import ArcFaceEmbedder  # onnxruntime only where it is used

        if settings.arcface_weights is None:
            raise ModelWeightsUnavailable(
                "LIKENESS_SCORING_FACE_BACKEND=arcface needs LIKENESS_SCORING_ARCFACE_WEIGHTS: the path of an "
                "ArcFace ONNX file (e.g. w600k_r50.onnx from insightface's buffalo_l model pack; never downloaded)"
            )
        return ArcFaceEmbedder(settings.arcface_weights, threads=settings.torch_threads)
    if settings.face_process:
        return ProcessFaceEmbedder(jitters=settings.face_jitters)
    return DlibFaceEmbedder(jitters=settings.face_jitters)


def thresholds_from(settings: ScoringSettings, *, face_model: str) -> tuple[ScoringThresholds, str | None]:
    """The thresholds and the calibration profile's name: face thresholds from the profile when one is set."""
    clip = {"clip_same_above": settings.clip_same_above, "clip_uncertain_above": settings.clip_uncertain_above}
    if settings.calibration_profile is None:
        face = {"face_same_below": settings.face_same_below, "face_uncertain_below": settings.face_uncertain_below}
        return ScoringThresholds(**face, **clip), None
    path = settings.calibration_profile
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CalibrationProfileError(
            f"LIKENESS_SCORING_CALIBRATION_PROFILE={path} cannot be read ({error}): point it at a profile "
            "saved by `likeness calibrate --save NAME` (under .likeness/calibration/), or unset it"
        ) from error
    try:
        profile = CalibrationProfile.from_json(text)
        face_thresholds = profile.thresholds_for(face_model)
    except CalibrationProfileError as error:
        raise CalibrationProfileError(f"LIKENESS_SCORING_CALIBRATION_PROFILE={path}: {error}") from error
    return (
        ScoringThresholds(
            face_same_below=face_thresholds.face_same_below,
            face_uncertain_below=face_thresholds.face_uncertain_below,
            **clip,
        ),
        profile.name,
    )
