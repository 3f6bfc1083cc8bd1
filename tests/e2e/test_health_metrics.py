"""Every service, as its own process, says where its health endpoint is and what it has done."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from infra.processes import SERVICES
from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import submit_sample, wait_completed

pytestmark = pytest.mark.e2e


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=10.0)
    assert response.status_code == 200
    return response.text


def value(text: str, sample: str) -> float:
    """One sample's value (`name{labels}` exactly as exposed), 0 when absent."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_every_service_is_ready_and_its_metrics_follow_a_character(system: RunningSystem) -> None:
    urls = system.services.urls()
    assert sorted(urls) == sorted(SERVICES)
    for name, url in urls.items():
        ready = httpx.get(f"{url}/readyz", timeout=10.0)
        assert ready.status_code == 200, (name, ready.text)
        assert httpx.get(f"{url}/healthz", timeout=10.0).status_code == 200

    cost = 'likeness_provider_cost_usd_total{provider="sim"}'
    scored = "likeness_scoring_seconds_count"
    cost_before = value(scrape(urls["storage"]), cost)
    scored_before = value(scrape(urls["scoring"]), scored)

    character = wait_completed(system, submit_sample(system))

    shots_usd = sum(shot["cost_usd"] for shot in character["shots"])
    identity_usd = character["identity"]["cost_usd"] or 0.0
    assert shots_usd > 0
    # at least this character's costs (another test's late shot may land in between; none is counted twice:
    # tests/unit/test_observability.py)
    assert value(scrape(urls["storage"]), cost) - cost_before >= shots_usd + identity_usd - 1e-9
    assert value(scrape(urls["scoring"]), scored) - scored_before >= len(character["shots"])
    lag = 'likeness_consumer_lag{consumer="storage-shot-generated",stream="LIKENESS"}'
    deadline = time.monotonic() + 30
    while value(scrape(urls["storage"]), lag) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lag in scrape(urls["storage"])
    assert value(scrape(urls["storage"]), lag) == 0
