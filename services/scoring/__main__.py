from infra.service_main import run_worker
from services.scoring.app import create_app

run_worker("scoring", create_app)
