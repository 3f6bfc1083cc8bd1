from infra.service_main import run_worker
from services.provider_adapter.app import create_app

run_worker("provider_adapter", create_app)
