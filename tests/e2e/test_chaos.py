"""The chaos test (CI size): 20 characters x 15 shots on two replicas of every service while each
service is SIGKILLed in turn and NATS, PostgreSQL and the object store are restarted. Every shot must be
stored and scored exactly once, no provider job submitted twice, no object orphaned. It prints the counts
(pytest -s, or test-artifacts/chaos.json); `./taskw bench:chaos` runs a longer one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.chaos import ChaosPlan, run_chaos

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_nothing_lost_nothing_doubled_under_faults(tmp_path: Path) -> None:
    plan = ChaosPlan(characters=20, replicas=2, sim_latency_ms=400, fault_gap_s=3.0)
    result = run_chaos(tmp_path, plan)
    print(f"chaos run ({result.note}): {result.wall_s:.0f} s")
    for at, fault in result.faults:
        print(f"  {at:6.1f} s  {fault}")
    for name, count in result.counts.items():
        print(f"  {name:<52} {count}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "chaos.json").write_text(
        json.dumps({"counts": result.counts, "faults": result.faults, "problems": result.problems}, indent=2)
    )
    assert result.problems == []
    assert len(result.faults) == 4 * plan.replicas + 3  # every service of every replica, then the three servers
    assert result.counts["shots scored"] == 20 * 15
    assert result.counts["score rows"] == 20 * 15
