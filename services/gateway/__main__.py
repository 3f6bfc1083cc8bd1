"""`python -m services.gateway`: serve the HTTP API with uvicorn."""

import uvicorn

from infra.logs import configure_logging
from infra.settings import InfraSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

infra = InfraSettings()
settings = GatewaySettings()
configure_logging("gateway", infra.log_level)
uvicorn.run(create_app(infra, settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
