"""The scoring service: face identity (dlib) and CLIP image similarity for every stored shot."""

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
    scorer = ThreadedScorer(scoring_settings or ScoringSettings())
    runtime = Runtime("scoring", settings, migrations=MIGRATIONS)

    return worker_app(runtime, build_router(runtime, scorer), title="Likeness scoring", load=scorer.load)
