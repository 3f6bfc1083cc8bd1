"""What the operator commands (`likeness dlq`, `status`, `replay`) share: finding the running stack.

The database and NATS are the ones `--database-url` / `--nats-url` (or LIKENESS_DATABASE_URL /
LIKENESS_NATS_URL) name, else those of the stack `likeness up` runs from the data folder.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

T = TypeVar("T")

console = Console() if Console().is_terminal else Console(width=150)
errors = Console(stderr=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LIKENESS_DATABASE_URL",
        show_envvar=True,
        help="postgresql://... (default: the stack `likeness up` runs).",
    ),
]
NatsUrl = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        envvar="LIKENESS_NATS_URL",
        show_envvar=True,
        help="nats://... (default: the stack `likeness up` runs).",
    ),
]
DataDir = Annotated[Path | None, typer.Option(help="The data folder of the stack `likeness up` runs.")]


@dataclass(frozen=True)
class StackUrls:
    database_url: str
    nats_url: str
    data_dir: Path


def stack_urls(
    database_url: str | None, nats_url: str | None, data_dir: Path | None, *, command: str, need_nats: bool = True
) -> StackUrls:
    """The explicit URLs, else the running stack's; exits with a message saying what to do."""
    from infra.stack import recorded_endpoints

    project = Path(os.environ.get("LIKENESS_PROJECT_DIR", Path.cwd()))
    folder = (data_dir or Path(os.environ.get("LIKENESS_DATA_DIR", project / ".likeness" / "stack"))).resolve()
    if database_url and (nats_url or not need_nats):
        return StackUrls(database_url, nats_url or "", folder)
    endpoints = recorded_endpoints(folder)
    if endpoints is None:
        wanted = "--database-url and --nats-url" if need_nats else "--database-url"
        raise fail(command, f"no stack started by `likeness up` is running from {folder}; start one, or pass {wanted}")
    return StackUrls(database_url or endpoints.database_url, nats_url or endpoints.nats_url, folder)


def fail(command: str, message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[red]likeness {command}:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(command: str, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; a database or NATS that cannot be reached is a message, not a traceback."""
    import asyncpg
    from nats.errors import Error as NatsError

    try:
        return asyncio.run(work)
    except (OSError, TimeoutError, asyncpg.PostgresError, NatsError) as problem:
        raise fail(command, f"{type(problem).__name__}: {problem}") from None
