"""The chaos run: characters through two replicas of every service while services are killed and the
servers restarted; afterwards every shot must be stored and scored exactly once, no provider job
submitted twice, and no object orphaned.

`tests/e2e/test_chaos.py` runs the CI size (20 characters x 15 shots); `./taskw bench:chaos` a longer
one. It runs on a private embedded stack (the servers are restarted), with the offline simulator as the
provider, and says so.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from minio import Minio
from PIL import Image, ImageDraw

from infra.demo import DEMO_SIM_ENV, GatewayClient
from infra.processes import SERVICES, ServiceSet
from infra.sample import demo_shots, sample_reference_png
from infra.stack import EmbeddedStack, StackEndpoints
from infra.stack.ports import free_port

SIMULATED = "simulated: every shot comes from the offline simulator (no provider was called or paid)"


@dataclass(frozen=True)
class ChaosPlan:
    characters: int = 20
    replicas: int = 2
    sim_latency_ms: int = 400
    fault_gap_s: float = 3.0
    rounds: int = 1  # passes over the fault list
    timeout_s: float = 600.0


@dataclass
class ChaosResult:
    counts: dict[str, int]
    problems: list[str]
    faults: list[tuple[float, str]]
    wall_s: float
    note: str = SIMULATED
    extra: dict[str, Any] = field(default_factory=dict)


def character_reference(index: int) -> bytes:
    """The sample photo with a mark of its own, so each character's references and shots differ."""
    image = Image.open(io.BytesIO(sample_reference_png())).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((4 + 6 * (index % 40), 4, 8 + 6 * (index % 40), 12), fill=(index * 37 % 256, 255, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Gateways:
    """Every gateway replica; a call that finds one down tries the next."""

    def __init__(self, urls: list[str], key: str) -> None:
        self.clients = [GatewayClient(url, key, timeout_s=30.0) for url in urls]

    def call(self, work: Callable[[GatewayClient], Any], attempts: int = 60) -> Any:
        for attempt in range(attempts):
            client = self.clients[attempt % len(self.clients)]
            try:
                return work(client)
            except (httpx.TransportError, httpx.HTTPStatusError) as problem:
                if isinstance(problem, httpx.HTTPStatusError) and problem.response.status_code < 500:
                    raise
                time.sleep(0.5)
        raise RuntimeError("no gateway answered")

    def close(self) -> None:
        for client in self.clients:
            client.close()


def faults(stack: EmbeddedStack, replicas: list[ServiceSet], plan: ChaosPlan) -> list[tuple[str, Callable[[], None]]]:
    """SIGKILL each service of each replica in turn (restarted at once), then restart NATS, PostgreSQL
    and the object store (each killed hard)."""

    def kill_and_restart(services: ServiceSet, name: str) -> Callable[[], None]:
        def act() -> None:
            services.kill(name)
            services.start(name)  # comes back in the background; the next fault does not wait for it

        return act

    schedule: list[tuple[str, Callable[[], None]]] = []
    for _ in range(plan.rounds):
        for index, services in enumerate(replicas):
            for name in SERVICES:
                schedule.append((f"SIGKILL {name} (replica {index + 1}), restart", kill_and_restart(services, name)))
        schedule.append(("restart NATS (SIGKILL)", lambda: stack.restart_nats(hard=True)))
        schedule.append(("restart PostgreSQL (SIGKILL)", lambda: stack.restart_postgres(hard=True)))
        schedule.append(("restart the object store (SIGKILL)", lambda: stack.restart_objectstore(hard=True)))
    return schedule


def run_chaos(data_dir: Path, plan: ChaosPlan, *, say: Callable[[str], None] = print) -> ChaosResult:
    started = time.monotonic()
    stack = EmbeddedStack(data_dir / "stack")
    try:
        endpoints = stack.start()
        key = secrets.token_urlsafe(16)
        ports = [free_port() for _ in range(plan.replicas)]
        replicas = [
            ServiceSet(
                data_dir / f"replica-{index + 1}",
                {
                    **endpoints.env(),
                    **DEMO_SIM_ENV,
                    "LIKENESS_PROVIDER_ADAPTER_SIM_LATENCY_MS": str(plan.sim_latency_ms),
                    "LIKENESS_GATEWAY_PORT": str(port),
                    "LIKENESS_GATEWAY_API_KEYS": f"chaos-studio:{key}",
                    "LIKENESS_GATEWAY_RATE_LIMIT_PER_MINUTE": "60000",
                    "LIKENESS_GATEWAY_RATE_LIMIT_BURST": "5000",
                },
            )
            for index, port in enumerate(ports)
        ]
        gateways = Gateways([f"http://127.0.0.1:{port}" for port in ports], key)
        applied: list[tuple[float, str]] = []
        try:
            for services in replicas:
                services.start_all()
            say(f"stack and {plan.replicas} replicas of every service up after {time.monotonic() - started:.0f} s")
            characters = submit(gateways, plan)
            say(f"{len(characters)} characters x {len(demo_shots())} shots submitted; faults begin")
            chaos = threading.Thread(
                target=apply_faults, args=(faults(stack, replicas, plan), plan, applied, say, started), daemon=True
            )
            chaos.start()
            chaos.join()
            scored_by_then = sum(
                sum(
                    1
                    for shot in gateways.call(partial(GatewayClient.character, character_id=c))["shots"]
                    if shot["status"] == "scored"
                )
                for c in characters
            )
            say(f"faults over; {scored_by_then} shots scored so far")
            for services in replicas:  # everything killed is back before we judge
                services.wait_ready(list(services.running), timeout_s=180)
            wait_completed(gateways, characters, plan.timeout_s, say)
            counts, problems = asyncio.run(verify(endpoints, characters, replicas))
            counts["shots already scored when the faults ended"] = scored_by_then
        finally:
            gateways.close()
            for services in replicas:
                services.stop_all()
    finally:
        stack.destroy()  # the servers' data too (a PostgreSQL cluster may live under /var/lib/likeness)
    return ChaosResult(counts, problems, applied, time.monotonic() - started)


def submit(gateways: Gateways, plan: ChaosPlan) -> list[str]:
    """Every character and its 15 shots, through the gateways in turn."""
    characters = []
    for index in range(plan.characters):
        reference = (f"ref-{index}.png", character_reference(index), "image/png")
        character_id = gateways.call(
            partial(GatewayClient.create_character, name=f"Chaos {index}", references=[reference])
        )
        gateways.call(partial(GatewayClient.wait_for_character, character_id=character_id))
        for params in demo_shots(f"character {index}"):
            gateways.call(
                partial(GatewayClient.request_shot, character_id=character_id, params=params.model_dump(mode="json"))
            )
        characters.append(character_id)
    return characters


def apply_faults(
    schedule: list[tuple[str, Callable[[], None]]],
    plan: ChaosPlan,
    applied: list[tuple[float, str]],
    say: Callable[[str], None],
    started: float,
) -> None:
    for label, act in schedule:
        time.sleep(plan.fault_gap_s)
        act()
        at = time.monotonic() - started
        applied.append((at, label))
        say(f"{at:6.1f} s  {label}")


def wait_completed(gateways: Gateways, characters: list[str], timeout_s: float, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = set(characters)
    while waiting and time.monotonic() < deadline:
        for character_id in sorted(waiting):
            if gateways.call(partial(GatewayClient.character, character_id=character_id))["status"] == "completed":
                waiting.discard(character_id)
        time.sleep(1.0)
    if waiting:
        say(f"{len(waiting)} characters not completed after {timeout_s:.0f} s")


async def verify(
    endpoints: StackEndpoints, characters: list[str], replicas: list[ServiceSet]
) -> tuple[dict[str, int], list[str]]:
    """What the run left behind, counted in PostgreSQL and in the object store, and what is wrong with it."""
    import uuid

    ids = [uuid.UUID(c) for c in characters]
    conn = await asyncpg.connect(endpoints.database_url)
    try:
        shots = await conn.fetch(
            """SELECT s.shot_id, s.status, s.image->>'key' AS image_key,
                      (SELECT count(*) FROM records.scores sc WHERE sc.shot_id = s.shot_id) AS scores,
                      (SELECT count(*) FROM records.event_log e WHERE e.type = 'ShotScored'
                         AND e.payload->>'shot_id' = s.shot_id::text) AS scored_events,
                      (SELECT count(*) FROM records.event_log e WHERE e.type = 'ShotStored'
                         AND e.payload->>'shot_id' = s.shot_id::text) AS stored_events
               FROM records.shots s WHERE s.character_id = ANY($1::uuid[])""",
            ids,
        )
        jobs = await conn.fetch(
            "SELECT shot_id, attempt, outcome, failure FROM provider.shot_jobs ORDER BY shot_id, attempt"
        )
        reference_keys = {
            row["key"] for row in await conn.fetch("SELECT image->>'key' AS key FROM records.reference_images")
        }
        weights_keys = {
            row["key"]
            for row in await conn.fetch(
                "SELECT identity_weights->>'key' AS key FROM records.characters WHERE identity_weights IS NOT NULL"
            )
        }
        dead_letters = await conn.fetchval("SELECT count(*) FROM messaging.dead_letters")
    finally:
        await conn.close()
    store = Minio(
        endpoints.s3_endpoint,
        access_key=endpoints.s3_access_key,
        secret_key=endpoints.s3_secret_key,
        secure=endpoints.s3_secure,
    )
    objects = {obj.object_name for obj in store.list_objects(endpoints.s3_bucket, recursive=True) if obj.object_name}
    shot_keys = {row["image_key"] for row in shots if row["image_key"]}
    referenced = shot_keys | reference_keys | weights_keys

    problems: list[str] = []
    expected = len(characters) * len(demo_shots())
    statuses = Counter(row["status"] for row in shots)
    if len(shots) != expected:
        problems.append(f"{len(shots)} shots recorded, {expected} requested")
    not_scored = [str(row["shot_id"]) for row in shots if row["status"] != "scored"]
    if not_scored:
        problems.append(f"{len(not_scored)} shots not scored ({dict(statuses)}), e.g. {not_scored[:3]}")
    for column, what in (
        ("scores", "score rows"),
        ("scored_events", "ShotScored events"),
        ("stored_events", "ShotStored events"),
    ):
        wrong = [row[column] for row in shots if row[column] != 1]
        if wrong:
            problems.append(f"{len(wrong)} shots with {what} other than 1: {Counter(wrong)}")
    submissions = Counter(row["shot_id"] for row in jobs)
    by_shot: dict[Any, list[asyncpg.Record]] = {}
    for row in jobs:
        by_shot.setdefault(row["shot_id"], []).append(row)
    doubled = [
        shot_id
        for shot_id, rows in by_shot.items()
        if any(row["outcome"] != "failed" for row in rows[:-1]) or rows[-1]["outcome"] not in ("succeeded",)
    ]
    if doubled:
        problems.append(f"{len(doubled)} shots whose provider jobs are not 'failed...failed, succeeded'")
    twice_logged = sum(
        (services.data_dir / "logs" / "provider_adapter.log").read_text(errors="replace").count("submitted twice")
        for services in replicas
        if (services.data_dir / "logs" / "provider_adapter.log").exists()
    )
    if twice_logged:
        problems.append(f"the provider adapters logged {twice_logged} double submissions")
    orphans, missing = objects - referenced, referenced - objects
    if orphans:
        problems.append(f"{len(orphans)} objects no record points to, e.g. {sorted(orphans)[:3]}")
    if missing:
        problems.append(f"{len(missing)} recorded images missing from the object store, e.g. {sorted(missing)[:3]}")
    failures = Counter((row["failure"] or "")[:80] for row in jobs if row["outcome"] == "failed")
    counts = {
        "shots requested": expected,
        "shots recorded": len(shots),
        "shots scored": statuses.get("scored", 0),
        "shots failed": statuses.get("failed", 0),
        "score rows": sum(row["scores"] for row in shots),
        "ShotScored events": sum(row["scored_events"] for row in shots),
        "provider jobs submitted": len(jobs),
        "provider jobs retried after a failed job": len(jobs) - len(submissions),
        "shots submitted more than once without a failed job": len(doubled),
        "objects in the store": len(objects),
        "objects no record points to": len(orphans),
        "recorded images missing": len(missing),
        "dead letters": int(dead_letters),
    }
    for reason, count in failures.most_common(3):
        counts[f"failed jobs: {reason}"] = count
    return counts, problems
