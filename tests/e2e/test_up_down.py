"""`likeness up` keeps the stack running in the background; `down` stops it; data survives both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.demo import GatewayClient
from infra.sample import sample_reference_png
from infra.stack import EmbeddedStack, stack_running
from infra.stack.ports import free_port

pytestmark = pytest.mark.e2e


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_up_down_up_keeps_characters(tmp_path: Path) -> None:
    data_dir = tmp_path / "likeness-data"
    port = free_port()
    started = cli("up", "--data-dir", str(data_dir), "--port", str(port))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        api_key = (data_dir / "api-key").read_text().strip()
        assert api_key in started.stdout
        assert oct((data_dir / "api-key").stat().st_mode & 0o777) == "0o600"
        client = GatewayClient(f"http://127.0.0.1:{port}", api_key)
        character_id = client.create_character("Kept", [("a.png", sample_reference_png(), "image/png")])
        client.wait_for_character(character_id)
        client.close()

        again = cli("up", "--data-dir", str(data_dir), "--port", str(port))
        assert again.returncode == 1
        assert "already running" in again.stdout

        stopped = cli("down", "--data-dir", str(data_dir))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not stack_running(data_dir)

        restarted = cli("up", "--data-dir", str(data_dir), "--port", str(port))
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        client = GatewayClient(f"http://127.0.0.1:{port}", api_key)
        assert client.character(character_id)["name"] == "Kept"
        client.request_shot(character_id, {"prompt": "portrait", "scenario": "portrait"})
        deadline = time.monotonic() + 60
        while client.character(character_id)["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.3)
        client.close()

        # `likeness report` finds the running gateway and its key by itself
        table = cli("report", "--data-dir", str(data_dir))
        assert table.returncode == 0, table.stdout + table.stderr
        assert "Per provider" in table.stdout
        assert "Scorecard" in table.stdout
        assert "simulator" in table.stdout  # the figures say where they came from
        as_json = cli("report", "--data-dir", str(data_dir), "--format", "json", "--character", character_id)
        assert json.loads(as_json.stdout)["summaries"][0]["shots_requested"] == 1
        as_csv = cli("report", "--data-dir", str(data_dir), "--format", "csv", "--section", "scorecard")
        assert as_csv.stdout.startswith("provider,total,tier,")
        wrong = cli("report", "--data-dir", str(data_dir), "--format", "csv", "--section", "nope")
        assert wrong.returncode == 2
        assert "choose one of" in wrong.stdout + wrong.stderr

        # `likeness status` finds the stack and every service's health endpoint by itself
        screen = cli("status", "--data-dir", str(data_dir))
        assert screen.returncode == 0, screen.stdout + screen.stderr
        assert "storage-shot-generated" in screen.stdout
        assert "no dead letters waiting" in screen.stdout
        state = json.loads(cli("status", "--data-dir", str(data_dir), "--json").stdout)
        assert {s["name"]: s["state"] for s in state["services"]} == dict.fromkeys(
            ("storage", "provider_adapter", "scoring", "gateway"), "ready"
        )
        consumers = {c["name"]: c for c in state["consumers"]}
        assert consumers["storage-shot-scored"]["pending"] == 0  # the one shot was scored and recorded
        assert state["stream"]["max_age_s"] == 30 * 24 * 3600
        assert state["dead_letters"] == {}
    finally:
        cli("down", "--data-dir", str(data_dir))
        EmbeddedStack(data_dir).postgres.remove_external_cluster()  # kept under /var/lib/likeness as root
    assert not stack_running(data_dir)
