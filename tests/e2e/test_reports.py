"""Reports end to end: two providers' characters through every service, then the report and its CSV."""

from __future__ import annotations

import csv
import hashlib
import io

import httpx
import pytest

from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import submit_sample, wait_completed

pytestmark = pytest.mark.e2e


def test_the_report_compares_providers_from_what_was_measured(system: RunningSystem) -> None:
    sim = submit_sample(system, provider="sim")
    fal = submit_sample(system, provider="fal-instant-character")
    sim_character, fal_character = wait_completed(system, sim), wait_completed(system, fal)
    client = system.client.http

    one = client.get("/v1/reports", params={"character_id": sim})
    assert one.status_code == 200, one.text
    [summary] = one.json()["summaries"]
    scored = [shot for shot in sim_character["shots"] if shot["status"] == "scored"]
    assert (summary["provider"], summary["shots_requested"], summary["shots_scored"]) == ("sim", 15, len(scored))
    distances = [s["score"]["face"]["distance"] for s in scored if s["score"]["face"]["distance"] is not None]
    assert summary["identity"]["n"] == len(distances)
    assert summary["identity"]["mean"] == pytest.approx(sum(distances) / len(distances), rel=1e-3)
    assert summary["pass_rate"] == pytest.approx(sum(s["score"]["verdict"] == "same" for s in scored) / len(scored))
    assert one.json()["simulated"] is True
    assert "simulator" in one.json()["note"]

    report = client.get("/v1/reports", params={"characters": 10}).json()
    providers = {row["provider"] for row in report["summaries"]}
    assert {"sim", "fal-instant-character"} <= providers
    pair = [
        c
        for c in report["comparisons"]
        if c["metric"] == "face_distance" and {c["provider_a"], c["provider_b"]} == {"fal-instant-character", "sim"}
    ]
    assert len(pair) == 1
    assert pair[0]["conclusion"]  # a sentence either way, never a silent number
    tiers = {row["provider"]: row["tier"] for row in report["scorecard"]}
    assert set(tiers.values()) <= {1, 2, 3}
    assert {"sim", "fal-instant-character"} <= set(tiers)
    fal_monthly = {
        p["shots_per_month"]: p["monthly_cost_usd"]
        for p in report["projections"]
        if p["provider"] == "fal-instant-character" and not p["skipped"]
    }
    fal_shot_cost = next(r for r in report["summaries"] if r["provider"] == "fal-instant-character")[
        "cost_per_shot_usd"
    ]
    assert fal_monthly[10_000] == pytest.approx(10_000 * fal_shot_cost, rel=1e-3)  # no training: $0 per identity
    assert report["characters_projected"] == 10
    assert {row["provider"] for row in report["scenarios"]} >= {"sim", "fal-instant-character"}

    exported = client.get("/v1/reports/summaries.csv")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {row["provider"] for row in rows} == providers
    assert client.get("/v1/reports/nonsense.csv").status_code == 422

    # every image comes with a short-lived link that needs no key (for <img src> and downloads)
    shot_image = sim_character["shots"][0]["image"]
    with httpx.Client(base_url=system.base_url) as anonymous:
        linked = anonymous.get(shot_image["url"])
        assert linked.status_code == 200
        assert hashlib.sha256(linked.content).hexdigest() == shot_image["sha256"]
        assert anonymous.get(sim_character["references"][0]["url"]).status_code == 200

    # another tenant sees none of it
    other = system.other_tenant.http
    assert other.get("/v1/reports", params={"character_id": sim}).status_code == 404
    assert fal_character["character_id"] not in {
        c["character_id"] for c in other.get("/v1/characters").json()["characters"]
    }
    listed = client.get("/v1/characters", params={"limit": 200}).json()["characters"]
    assert {sim, fal} <= {c["character_id"] for c in listed}
