"""The scoring service: face identity (dlib), CLIP image similarity and prompt adherence for every stored shot."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from infra.runtime import Runtime, worker_app
from infra.settings import InfraSettings
from services.scoring.adapters.models import ThreadedScorer
from services.scoring.settings import ScoringSettings
from services.scoring.subscribers import build_router

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: InfraSettings, scoring_settings: ScoringSettings | None = None) -> FastStream:
    """Loads the models first (seconds): the consumer is named after the scorer's key, which they determine."""
    scoring = scoring_settings or ScoringSettings()
    scorer = ThreadedScorer(scoring)
    key = scorer.load().key
    runtime = Runtime("scoring", settings, migrations=MIGRATIONS)
    router = build_router(runtime, scorer, key=key, batch_size=scoring.batch_size, rescore=scoring.rescore)
    return worker_app(runtime, router, title="Likeness scoring")
