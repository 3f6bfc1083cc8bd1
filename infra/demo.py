"""`likeness demo`: the sample character through all four services, on the embedded stack."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra import report
from infra.fakes import FAKED_PROVIDERS
from infra.processes import ServiceSet
from infra.sample import SAMPLE_NAME, demo_shots, sample_reference_png
from infra.stack import EmbeddedStack
from infra.stack.ports import free_port

# What the simulator does in the demo: some latency, transient failures (retried), and some drift.
DEMO_SIM_ENV = {
    "LIKENESS_PROVIDER_ADAPTER_SIM_LATENCY_MS": "300",
    "LIKENESS_PROVIDER_ADAPTER_SIM_LATENCY_JITTER_MS": "150",
    "LIKENESS_PROVIDER_ADAPTER_SIM_IDENTITY_SECONDS": "1.5",
    "LIKENESS_PROVIDER_ADAPTER_SIM_FAILURE_RATE": "0.1",
    "LIKENESS_PROVIDER_ADAPTER_SIM_DRIFT_RATE": "0.2",
    # The consistency gate off: the demo (and the e2e suite and the chaos run, which reuse this) shows one take per
    # shot, so what the scorer catches stays visible; tests/e2e/test_consistency_gate.py turns the gate on.
    "LIKENESS_STORAGE_GATE_MAX_REGENERATIONS": "0",
}


DEMO_PROVIDERS = ("sim", *FAKED_PROVIDERS)


@dataclass(frozen=True)
class DemoResult:
    character: dict[str, Any]
    csv_path: Path
    html_path: Path
    wall_s: float
    service_rss_mb: dict[str, float]
    exit_codes: dict[str, int | None]
    notice: str | None = None  # what was not real about the provider, when it was a fake
    provider_report: dict[str, Any] | None = None  # GET /v1/reports for the character


class GatewayClient:
    """A small client for the gateway's HTTP API (the demo and the end-to-end tests use it)."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def create_character(self, name: str, references: list[tuple[str, bytes, str]], provider: str = "sim") -> str:
        files = [("references", ref) for ref in references]
        response = self.http.post(
            "/v1/characters", data={"name": name, "provider": provider, "strategy": "instant_reference"}, files=files
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def wait_for_character(self, character_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            response = self.http.get(f"/v1/characters/{character_id}")
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"character {character_id} not recorded after {timeout_s} s: {response.text}")
            time.sleep(0.25)

    def request_shot(self, character_id: str, params: dict[str, Any]) -> str:
        response = self.http.post(f"/v1/characters/{character_id}/shots", json=params)
        response.raise_for_status()
        return str(response.json()["id"])

    def character(self, character_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/characters/{character_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def report(self, character_id: str | None = None) -> dict[str, Any]:
        """GET /v1/reports (one character's, or the tenant's)."""
        params = {"character_id": character_id} if character_id else None
        response = self.http.get("/v1/reports", params=params)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def image(self, sha256: str) -> bytes:
        response = self.http.get(f"/v1/images/{sha256}")
        response.raise_for_status()
        return response.content

    def events(self, character_id: str, timeout_s: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Follow the character's server-sent events until the caller stops iterating."""
        with self.http.stream(
            "GET", f"/v1/characters/{character_id}/events", timeout=httpx.Timeout(timeout_s, connect=5.0)
        ) as response:
            response.raise_for_status()
            event_type, data = "", ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event_type = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and event_type:
                    yield event_type, json.loads(data)
                    event_type, data = "", ""


def follow_progress(
    client: GatewayClient,
    character_id: str,
    shots: int,
    console: Console,
    timeout_s: float,
    identity_label: str = "identity (simulated)",
) -> None:
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        identity = progress.add_task(identity_label, total=100)
        generated = progress.add_task("shots generated", total=shots)
        scored = progress.add_task("shots scored", total=shots)
        for event_type, payload in client.events(character_id, timeout_s):
            if event_type == "IdentityProgress":
                progress.update(identity, completed=payload["percent"])
            elif event_type == "IdentityReady":
                progress.update(identity, completed=100)
            elif event_type == "ShotStored":
                progress.advance(generated)
            elif event_type == "ShotScored":
                progress.advance(scored)
            elif event_type == "ShotFailed":
                progress.advance(generated)
                progress.advance(scored)
            elif event_type == "CharacterCompleted" and payload["shots_total"] >= shots:
                return


def service_memory_mb(pids: dict[str, int]) -> dict[str, float]:
    """Resident memory of each service with its child processes (scoring's face process)."""
    import psutil

    sizes = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            family = [process, *process.children(recursive=True)]
            sizes[name] = sum(member.memory_info().rss for member in family) / 1e6
        except psutil.Error:
            continue
    return sizes


def run_demo(project_dir: Path, console: Console, *, timeout_s: float = 300.0, provider: str = "sim") -> DemoResult:
    """The sample character on `provider`: `sim`, or a fal provider against a fake fal server on loopback."""
    if provider not in DEMO_PROVIDERS:
        raise ValueError(f"the demo runs on one of {', '.join(DEMO_PROVIDERS)}, not {provider!r}")
    started = time.monotonic()
    data_dir = project_dir / ".likeness" / "demo"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # each demo starts from nothing, so its figures repeat
    api_key = secrets.token_urlsafe(24)
    port = free_port()
    console.print(f"[bold]Likeness demo[/bold]: embedded stack and four services in {data_dir}")
    with ExitStack() as fakes, EmbeddedStack(data_dir) as stack:
        endpoints = stack.endpoints
        env = {
            **endpoints.env(),
            **DEMO_SIM_ENV,
            "LIKENESS_GATEWAY_PORT": str(port),
            "LIKENESS_GATEWAY_API_KEYS": f"demo-studio:{api_key}",
        }
        source, notice = "the offline simulator", None
        if provider != "sim":
            from infra.fakes.fleet import fake_fleet  # numpy, uvicorn, the fakes: only when they are wanted

            fleet = fakes.enter_context(fake_fleet())
            env.update(fleet.env())
            source, notice = f"{provider} on a FAKE server (simulated, not the provider)", fleet.notice(provider)
            console.print(f"[bold yellow]{notice}[/bold yellow]")
        services = ServiceSet(data_dir, env)
        exit_codes: dict[str, int | None] = {}
        try:
            services.start_all()
            console.print(f"services up: {', '.join(f'{n} (pid {p})' for n, p in services.pids().items())}")
            client = GatewayClient(f"http://127.0.0.1:{port}", api_key)
            reference = ("astronaut.png", sample_reference_png(), "image/png")
            character_id = client.create_character(SAMPLE_NAME, [reference], provider=provider)
            client.wait_for_character(character_id)
            shots = demo_shots()
            for params in shots:
                client.request_shot(character_id, params.model_dump(mode="json"))
            console.print(f"character {character_id}: {len(shots)} shots requested from {source}")
            labels = {
                "sim": "identity (simulated)",
                "fal-flux-lora": "identity (LoRA training, fake fal)",
                "astria-tune": "identity (fine-tune, fake Astria)",
                "replicate-flux-lora": "identity (LoRA training, fake Replicate)",
            }
            label = labels.get(provider, "identity (instant)")
            follow_progress(client, character_id, len(shots), console, timeout_s, label)
            memory = service_memory_mb(services.pids())
            character = client.character(character_id)
            images = {ref["sha256"]: client.image(ref["sha256"]) for ref in character["references"]}
            for shot in character["shots"]:
                if shot["image"]:
                    images[shot["image"]["sha256"]] = client.image(shot["image"]["sha256"])
            provider_report = client.report(character_id)
            client.close()
        finally:
            exit_codes = services.stop_all()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = project_dir / ".likeness" / "reports" / f"demo-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = report.write_csv(character, out_dir / "shots.csv")
    html_path = report.write_html(character, images, out_dir)
    (out_dir / "report.json").write_text(json.dumps(provider_report, indent=2))
    return DemoResult(
        character, csv_path, html_path, time.monotonic() - started, memory, exit_codes, notice, provider_report
    )
