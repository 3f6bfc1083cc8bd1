"""The scorer the service runs: models loaded once, CPU work off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from contracts import ShotScore
from services.scoring.adapters.clip import OpenClipImageEmbedder
from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.calibration import CalibrationProfile, CalibrationProfileError
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
        settings = self._settings
        face = DlibFaceEmbedder(jitters=settings.face_jitters)
        thresholds, profile = thresholds_from(settings, face_model=face.model_name)  # fails before CLIP's slow load
        images = OpenClipImageEmbedder(
            model_name=settings.clip_model,
            weights=settings.clip_weights,
            offline=settings.offline,
            threads=settings.torch_threads,
            precision=settings.clip_precision,
            prompt_adherence=settings.prompt_adherence,
        )
        return Scorer(
            face,
            images,
            thresholds,
            texts=images if settings.prompt_adherence else None,
            calibration_profile=profile,
            max_face_candidates=settings.max_face_candidates,
        )

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
