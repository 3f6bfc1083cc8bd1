from infra.service_main import run_worker
from services.scoring.app import create_app

if __name__ == "__main__":  # not when a spawned child process imports this module
    run_worker("scoring", create_app)
