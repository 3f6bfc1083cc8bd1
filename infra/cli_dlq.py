"""`likeness dlq`: the messages consumers gave up on (see infra/dead_letters.py): list, show, redrive, drop."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated

import typer
from rich.table import Table

from infra.cli_ops import DatabaseUrl, DataDir, NatsUrl, console, fail, run, stack_urls
from infra.dead_letters import DeadLetter, PostgresDeadLetters, redrive

app = typer.Typer(
    help="Dead letters: messages a consumer gave up on after max_deliver, with their error.", no_args_is_help=True
)


@contextlib.asynccontextmanager
async def _dead_letters(database_url: str) -> AsyncIterator[PostgresDeadLetters]:
    from infra.db import INFRA_MIGRATIONS, create_pool, migrate

    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await migrate(pool, "messaging", INFRA_MIGRATIONS)  # the table exists before any service's first start
        yield PostgresDeadLetters(pool)
    finally:
        await pool.close()


def _when(moment: object) -> str:
    return "" if moment is None else str(moment)[:19]


def _one_line(text: str, width: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


@app.command("list")
def list_command(
    consumer: Annotated[str | None, typer.Option(help="Only this consumer's, e.g. scoring-shot-stored-...")] = None,
    every: Annotated[bool, typer.Option("--all", help="Also those already redriven or dropped.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Dead letters, oldest first: id, consumer, event, deliveries, when, state and error (`show` has the rest)."""
    urls = stack_urls(database_url, None, data_dir, command="dlq", need_nats=False)

    async def work() -> list[DeadLetter]:
        async with _dead_letters(urls.database_url) as letters:
            return await letters.list(consumer=consumer, every=every, limit=limit)

    found = run("dlq", work())
    if not found:
        console.print("no dead letters" + ("" if every else " waiting (--all shows redriven and dropped ones)"))
        return
    table = Table("id", "consumer", "event", "deliveries", "dead at", "state", "error")
    for letter in found:
        table.add_row(
            str(letter.id),
            letter.consumer,
            str(letter.event_id or "(unreadable)"),
            str(letter.deliveries),
            _when(letter.dead_at),
            letter.state,
            _one_line(letter.error),
        )
    console.print(table)


def _payload_text(payload: bytes) -> str:
    try:
        return json.dumps(json.loads(payload), indent=2)
    except ValueError:
        return f"(not JSON; {len(payload)} bytes) {payload[:400]!r}"


@app.command()
def show(
    letter_id: Annotated[int, typer.Argument(help="The id from `likeness dlq list`.")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """One dead letter in full: where it came from, its error, its headers and the message itself."""
    urls = stack_urls(database_url, None, data_dir, command="dlq", need_nats=False)

    async def work() -> DeadLetter | None:
        async with _dead_letters(urls.database_url) as letters:
            return await letters.get(letter_id)

    letter = run("dlq", work())
    if letter is None:
        raise fail("dlq", f"no dead letter {letter_id}; `likeness dlq list --all` shows them", code=1)
    for label, value in (
        ("id", letter.id),
        ("state", letter.state),
        ("service", letter.service),
        ("consumer", letter.consumer),
        ("subject", letter.subject),
        ("stream sequence", letter.stream_seq),
        ("event id", letter.event_id),
        ("character", letter.correlation_id),
        ("tenant", letter.tenant_id),
        ("deliveries", letter.deliveries),
        ("dead at", _when(letter.dead_at)),
        ("redriven", f"{letter.redrive_count} time(s), last {_when(letter.redriven_at)}" * bool(letter.redrive_count)),
        ("dropped at", _when(letter.dropped_at)),
    ):
        console.print(f"[bold]{label}:[/bold] {value if value is not None else ''}", highlight=False)
    console.print("[bold]error:[/bold]", highlight=False)
    console.print(letter.error, highlight=False, markup=False)
    console.print(f"[bold]headers:[/bold] {json.dumps(letter.headers)}", highlight=False)
    console.print("[bold]message:[/bold]", highlight=False)
    console.print(_payload_text(letter.payload), highlight=False, markup=False)


def _chosen(ids: list[int], every: bool, consumer: str | None, command: str) -> None:
    if not ids and not every:
        raise fail("dlq", f"name the dead letters to {command} (ids from `likeness dlq list`), or pass --all")
    if ids and every:
        raise fail("dlq", "give ids or --all, not both")
    if consumer and not every:
        raise fail("dlq", "--consumer narrows --all; with ids it is not needed")


@app.command("redrive")
def redrive_command(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead letter ids.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every waiting dead letter (of --consumer, if given).")] = False,
    consumer: Annotated[str | None, typer.Option(help="With --all: only this consumer's.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be redriven; publish nothing.")] = False,
    database_url: DatabaseUrl = None,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Publish dead letters again, each for the consumer that gave up on it (fix the cause first)."""
    _chosen(ids or [], every, consumer, "redrive")
    urls = stack_urls(database_url, nats_url, data_dir, command="dlq")

    async def work() -> list[tuple[DeadLetter, str]]:
        import nats

        from contracts import STREAM_NAME

        connection = None if dry_run else await nats.connect(urls.nats_url, connect_timeout=5, max_reconnect_attempts=1)

        async def publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
            assert connection is not None
            await connection.jetstream().publish(subject, body, headers=headers, stream=STREAM_NAME, timeout=5.0)

        done: list[tuple[DeadLetter, str]] = []
        try:
            async with _dead_letters(urls.database_url) as letters:
                for letter in await _select(letters, ids or [], every, consumer):
                    if letter.dropped_at is not None:
                        console.print(f"dead letter {letter.id} was dropped; skipped", highlight=False)
                    elif dry_run:
                        done.append((letter, "(dry run)"))
                    else:
                        msg_id = await redrive(letter, publish)
                        await letters.mark_redriven(letter.id)
                        done.append((letter, msg_id))
        finally:
            if connection is not None:
                await connection.close()
        return done

    done = run("dlq", work())
    verb = "would redrive" if dry_run else "redriven"
    for letter, msg_id in done:
        console.print(f"{verb} {letter.id}: {letter.subject} -> {letter.consumer} {msg_id}", highlight=False)
    console.print(f"{len(done)} dead letter(s) {verb}", highlight=False)


async def _select(letters: PostgresDeadLetters, ids: list[int], every: bool, consumer: str | None) -> list[DeadLetter]:
    if every:
        return await letters.list(consumer=consumer, limit=10000)
    chosen = []
    for letter_id in ids:
        letter = await letters.get(letter_id)
        if letter is None:
            raise fail("dlq", f"no dead letter {letter_id}; `likeness dlq list --all` shows them", code=1)
        chosen.append(letter)
    return chosen


@app.command()
def drop(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead letter ids.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every waiting dead letter (of --consumer, if given).")] = False,
    consumer: Annotated[str | None, typer.Option(help="With --all: only this consumer's.")] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Give up on dead letters for good (they stay in the table, marked dropped, for the record)."""
    _chosen(ids or [], every, consumer, "drop")
    urls = stack_urls(database_url, None, data_dir, command="dlq", need_nats=False)

    async def work() -> list[DeadLetter]:
        async with _dead_letters(urls.database_url) as letters:
            chosen = await _select(letters, ids or [], every, consumer)
            return [dropped for letter in chosen if (dropped := await letters.drop(letter.id)) is not None]

    dropped = run("dlq", work())
    console.print(f"{len(dropped)} dead letter(s) dropped", highlight=False)
