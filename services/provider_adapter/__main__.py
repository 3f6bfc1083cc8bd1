from infra.service_main import run_worker
from services.provider_adapter.app import create_app

if __name__ == "__main__":  # not when a spawned child process imports this module
    run_worker("provider_adapter", create_app)
