"""`likeness status`: the running system in one screen: services, the stream, consumers and their lag,
dead letters."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from infra.cli_ops import DatabaseUrl, DataDir, NatsUrl, StackUrls, console, run, stack_urls


@dataclass
class ServiceState:
    name: str
    url: str | None
    state: str  # ready / not ready / down / not started
    detail: str = ""


@dataclass
class Status:
    services: list[ServiceState]
    stream: dict[str, Any]
    consumers: list[dict[str, Any]]
    dead_letters: dict[str, int] = field(default_factory=dict)


async def service_states(data_dir: Path) -> list[ServiceState]:
    """Each service's readiness, asked at the URL its ready file holds (our own loopback endpoints)."""
    import httpx

    from infra.processes import SERVICES, service_urls

    urls = service_urls(data_dir)
    states = []
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        for name in SERVICES:
            url = urls.get(name)
            if url is None:
                states.append(ServiceState(name, None, "not started", "no ready file with a URL"))
                continue
            try:
                answer = await client.get(f"{url}/readyz")
            except httpx.HTTPError as problem:
                states.append(ServiceState(name, url, "down", f"{type(problem).__name__}"))
                continue
            detail = _not_ready_detail(answer)
            states.append(ServiceState(name, url, "ready" if answer.status_code == 200 else "not ready", detail))
    return states


def _not_ready_detail(answer: Any) -> str:
    if answer.status_code == 200:
        return ""
    try:
        body = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}"
    if not isinstance(body, dict):
        return str(body)[:120]
    checks = body.get("checks")
    checks = checks if isinstance(checks, dict) else {}
    failing = [f"{name}: {value}" for name, value in checks.items() if value != "ok"]
    return "; ".join([str(body.get("status", "")), *failing]).strip("; ")


async def jetstream_state(nats_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import nats

    from contracts import STREAM_NAME

    connection = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = connection.jetstream()
        info = await js.stream_info(STREAM_NAME)
        oldest = await js.get_msg(STREAM_NAME, info.state.first_seq) if info.state.messages else None
        stream = {
            "name": STREAM_NAME,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "first_seq": info.state.first_seq,
            "last_seq": info.state.last_seq,
            "first_time": oldest.time if oldest is not None else None,
            "max_age_s": info.config.max_age,
            "max_bytes": info.config.max_bytes,
        }
        consumers = [
            {
                "name": consumer.name,
                "filter": consumer.config.filter_subject or ", ".join(consumer.config.filter_subjects or []),
                "pending": consumer.num_pending or 0,
                "ack_pending": consumer.num_ack_pending or 0,
                "redelivered": consumer.num_redelivered or 0,
                "delivered_seq": consumer.delivered.stream_seq if consumer.delivered else 0,
                "waiting": consumer.num_waiting or 0,
            }
            for consumer in await js.consumers_info(STREAM_NAME)
        ]
    finally:
        await connection.close()
    return stream, sorted(consumers, key=lambda c: (-(c["pending"] + c["ack_pending"]), c["name"]))


async def dead_letter_counts(database_url: str) -> dict[str, int]:
    from infra.db import INFRA_MIGRATIONS, create_pool, migrate
    from infra.dead_letters import PostgresDeadLetters

    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await migrate(pool, "messaging", INFRA_MIGRATIONS)
        return await PostgresDeadLetters(pool).open_counts()
    finally:
        await pool.close()


async def gather_status(urls: StackUrls) -> Status:
    stream, consumers = await jetstream_state(urls.nats_url)
    return Status(
        services=await service_states(urls.data_dir),
        stream=stream,
        consumers=consumers,
        dead_letters=await dead_letter_counts(urls.database_url),
    )


def _age(seconds: float | None) -> str:
    if not seconds:
        return "unlimited"
    days = seconds / 86400
    return f"{days:.0f} days" if days >= 1 else f"{seconds / 3600:.1f} h"


def render(status: Status) -> None:
    services = Table("service", "state", "endpoint", "detail", title="services")
    for service in status.services:
        colour = {"ready": "green", "not ready": "yellow"}.get(service.state, "red")
        services.add_row(service.name, f"[{colour}]{service.state}[/{colour}]", service.url or "", service.detail)
    console.print(services)

    stream = status.stream
    first = stream["first_time"]
    first_text = first.astimezone(UTC).isoformat(timespec="seconds") if isinstance(first, datetime) else "-"
    max_bytes = stream["max_bytes"]
    console.print(
        f"stream {stream['name']}: {stream['messages']} messages, {stream['bytes'] / 1e6:.1f} MB, "
        f"sequences {stream['first_seq']}..{stream['last_seq']}, oldest kept {first_text}; "
        f"retention {_age(stream['max_age_s'])}"
        + (f", at most {max_bytes / 1e9:.1f} GB" if max_bytes and max_bytes > 0 else ", no size limit"),
        highlight=False,
    )

    consumers = Table(
        "consumer", "subject", "lag", "in flight", "redelivered", "dead letters", title="consumers (most behind first)"
    )
    for consumer in status.consumers:
        dead = status.dead_letters.get(consumer["name"], 0)
        lag = consumer["pending"]
        consumers.add_row(
            consumer["name"],
            consumer["filter"],
            f"[yellow]{lag}[/yellow]" if lag else "0",
            str(consumer["ack_pending"]),
            str(consumer["redelivered"]),
            f"[red]{dead}[/red]" if dead else "0",
        )
    console.print(consumers)
    total_dead = sum(status.dead_letters.values())
    if total_dead:
        console.print(f"[red]{total_dead} dead letter(s) waiting[/red]: `likeness dlq list`", highlight=False)
    else:
        console.print("no dead letters waiting", highlight=False)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON, for scripts.")] = False,
    database_url: DatabaseUrl = None,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Services up, the event stream, every consumer's lag, and dead letters, in one screen."""
    urls = stack_urls(database_url, nats_url, data_dir, command="status")
    found = run("status", gather_status(urls))
    if as_json:
        typer.echo(json.dumps(asdict(found), default=str, indent=2))
    else:
        render(found)
