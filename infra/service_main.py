"""Entry point shared by the worker services: `python -m services.<name>`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from faststream import FastStream

from infra.logs import configure_logging
from infra.settings import InfraSettings


def run_worker(service: str, create_app: Callable[[InfraSettings], FastStream]) -> None:
    settings = InfraSettings()  # filled from LIKENESS_* environment variables
    configure_logging(service, settings.log_level)
    app = create_app(settings)
    asyncio.run(app.run())
