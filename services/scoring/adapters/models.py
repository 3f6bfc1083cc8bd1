"""The scorer the service runs: models loaded once, CPU work off the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from contracts import ShotScore
from services.scoring.adapters.clip import OpenClipImageEmbedder
from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.calibration import CalibrationProfile, CalibrationProfileError
from services.scoring.scorer import ReferenceEmbeddings, Scorer, ScoringThresholds
from services.scoring.settings import ScoringSettings


class ThreadedScorer:
    """Implements handlers.AsyncScorer. `load()` must run (once) before the first message."""

    @property
    def version(self) -> str:
        """The reference-embedding cache key: scorer version and both models' names and weights."""
        return self.scorer.embedding_version

    def __init__(self, settings: ScoringSettings) -> None:
        self._settings = settings
        self._scorer: Scorer | None = None
        # One thread does all model work: the models already use every core, and one thread keeps
        # one malloc arena (asyncio's default pool would grow several, each holding memory).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring-models")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        settings = self._settings
        face = DlibFaceEmbedder(jitters=settings.face_jitters)
        thresholds = thresholds_from(settings, face_model=face.model_name)  # fails before CLIP's slow load
        images = OpenClipImageEmbedder(
            model_name=settings.clip_model,
            weights=settings.clip_weights,
            offline=settings.offline,
            threads=settings.torch_threads,
            precision=settings.clip_precision,
        )
        self._scorer = Scorer(face, images, thresholds)

    @property
    def scorer(self) -> Scorer:
        assert self._scorer is not None, "ThreadedScorer.load() was not called"
        return self._scorer

    async def embed_references(self, images: list[Image.Image]) -> ReferenceEmbeddings:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.scorer.embed_references, images)

    def references_from_bytes(self, data: bytes) -> ReferenceEmbeddings:
        return ReferenceEmbeddings.from_bytes(data)

    async def score(self, shot: Image.Image, references: ReferenceEmbeddings) -> ShotScore:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.scorer.score, shot, references)


def thresholds_from(settings: ScoringSettings, *, face_model: str) -> ScoringThresholds:
    """The face thresholds: from the calibration profile when one is set, else from the two settings."""
    if settings.calibration_profile is None:
        return ScoringThresholds(
            face_same_below=settings.face_same_below, face_uncertain_below=settings.face_uncertain_below
        )
    path = settings.calibration_profile
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CalibrationProfileError(
            f"LIKENESS_SCORING_CALIBRATION_PROFILE={path} cannot be read ({error}): point it at a profile "
            "saved by `likeness calibrate --save NAME` (under .likeness/calibration/), or unset it"
        ) from error
    try:
        return CalibrationProfile.from_json(text).thresholds_for(face_model)
    except CalibrationProfileError as error:
        raise CalibrationProfileError(f"LIKENESS_SCORING_CALIBRATION_PROFILE={path}: {error}") from error
