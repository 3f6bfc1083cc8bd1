"""`python -m services.gateway`: serve the HTTP API with uvicorn."""

import signal
import sys

import uvicorn

from infra.logs import configure_logging
from infra.settings import InfraSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

infra = InfraSettings()
settings = GatewaySettings()
configure_logging("gateway", infra.log_level)
# uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it found at start:
# make that one a clean exit, so a requested stop reads as success (exit 0), not as death by signal.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
uvicorn.run(create_app(infra, settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
