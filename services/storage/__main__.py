from infra.service_main import run_worker
from services.storage.app import create_app

run_worker("storage", create_app)
