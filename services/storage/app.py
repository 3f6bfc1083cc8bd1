"""The storage service: the system of record (PostgreSQL rows, object-storage images)."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from infra.runtime import Runtime, worker_app
from infra.settings import InfraSettings
from services.storage.settings import StorageSettings
from services.storage.subscribers import build_router

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: InfraSettings, storage_settings: StorageSettings | None = None) -> FastStream:
    runtime = Runtime("storage", settings, migrations=MIGRATIONS)
    return worker_app(runtime, build_router(runtime, storage_settings or StorageSettings()), title="Likeness storage")
