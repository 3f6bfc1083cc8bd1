"""`likeness keys`: create, list and revoke the gateway's API keys (stored hashed in schema `gateway`).

The database is the one `--database-url` (or LIKENESS_DATABASE_URL) names, else the one of the stack
`likeness up` is running from the data folder.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.table import Table

from services.gateway.keys import SCOPES, TENANT, ApiKey, IssuedKey, Scope, key_id_of

if TYPE_CHECKING:  # asyncpg and the store load when a command runs, keeping `likeness --help` quick
    from services.gateway.adapters.api_keys import PostgresApiKeys

app = typer.Typer(
    help="API keys: create, list and revoke them (the gateway stores only their hashes).", no_args_is_help=True
)
console = Console() if Console().is_terminal else Console(width=150)
errors = Console(stderr=True)

T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LIKENESS_DATABASE_URL",
        show_envvar=True,
        help="postgresql://... of the gateway's database (default: the stack `likeness up` runs).",
    ),
]
DataDir = Annotated[Path | None, typer.Option(help="The data folder of the stack `likeness up` runs.")]


class NoDatabase(Exception):
    pass


def _default_data_dir() -> Path:
    """Where `likeness up` keeps its stack unless told otherwise (the same rule as infra.cli)."""
    project = Path(os.environ.get("LIKENESS_PROJECT_DIR", Path.cwd()))
    return Path(os.environ.get("LIKENESS_DATA_DIR", project / ".likeness" / "stack"))


def database_url(explicit: str | None, data_dir: Path | None) -> str:
    """The explicit URL, else the running stack's, else NoDatabase saying what to do."""
    if explicit:
        return explicit
    from infra.stack import recorded_endpoints

    folder = (data_dir or _default_data_dir()).resolve()
    endpoints = recorded_endpoints(folder)
    if endpoints is None:
        raise NoDatabase(
            f"no database: no stack started by `likeness up` is running from {folder}; "
            "start one, or pass --database-url (or set LIKENESS_DATABASE_URL)"
        )
    return endpoints.database_url


async def _with_keys(url: str, work: Callable[[PostgresApiKeys], Awaitable[T]]) -> T:
    from infra.db import create_pool
    from services.gateway.adapters.api_keys import PostgresApiKeys, migrate_gateway

    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        await migrate_gateway(pool)  # the table exists even before the gateway's first start
        return await work(PostgresApiKeys(pool))
    finally:
        await pool.close()


async def create_key(url: str, tenant_id: str, scopes: frozenset[Scope], name: str = "") -> IssuedKey:
    return await _with_keys(url, lambda keys: keys.create(tenant_id, scopes, name))


async def list_keys(url: str, tenant_id: str | None = None) -> list[ApiKey]:
    return await _with_keys(url, lambda keys: keys.list(tenant_id))


async def revoke_key(url: str, key_id: str) -> ApiKey | None:
    return await _with_keys(url, lambda keys: keys.revoke(key_id))


def run_with_database(
    work: Callable[[str], Coroutine[Any, Any, T]],
    explicit_url: str | None,
    data_dir: Path | None,
    command: str = "keys",
) -> T:
    """Run `work` on the database URL found (see `database_url`); problems reaching it are a message, exit 2."""
    try:
        url = database_url(explicit_url, data_dir)
    except NoDatabase as problem:
        errors.print(f"[red]likeness {command}:[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    import asyncio

    import asyncpg

    try:
        return asyncio.run(work(url))
    except (OSError, TimeoutError, asyncpg.PostgresError) as problem:  # unreachable, or refused the login
        errors.print(f"[red]likeness {command}:[/red] database {type(problem).__name__}: {problem}", highlight=False)
        raise typer.Exit(2) from None


def _when(moment: object) -> str:
    return "" if moment is None else str(moment)[:19]


@app.command()
def create(
    tenant: Annotated[str, typer.Option(help="The tenant (studio) the key acts for.")],
    scope: Annotated[
        list[str], typer.Option(help="read (GET calls), write (submit characters and shots), admin; repeatable.")
    ],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'ci'.")] = "",
    database_url_option: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key and print it once: it is stored only as a hash and cannot be shown again."""
    if not TENANT.match(tenant):
        raise typer.BadParameter(
            "letters, digits, '.', '_' or '-', at most 64, starting alphanumeric", param_hint="--tenant"
        )
    unknown = sorted(set(scope) - set(SCOPES))
    if unknown or not scope:
        raise typer.BadParameter(
            f"choose from {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})", param_hint="--scope"
        )
    scopes = frozenset(cast(list[Scope], scope))
    issued = run_with_database(lambda url: create_key(url, tenant, scopes, name), database_url_option, data_dir)
    key = issued.key
    console.print(f"created key {key.key_id} for tenant '{key.tenant_id}' ({', '.join(sorted(key.scopes))})")
    console.print("Keep it now; it is shown only this once:", highlight=False)
    typer.echo(issued.secret_key)  # plain, so `... | tail -1` captures the key alone


@app.command("list")
def list_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    database_url_option: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """The keys (never their secrets): id, tenant, name, scopes, when created, last used and revoked."""
    keys = run_with_database(lambda url: list_keys(url, tenant), database_url_option, data_dir)
    if not keys:
        console.print(
            "no API keys" + (f" for tenant '{tenant}'" if tenant else "") + " (bootstrap keys are not listed)"
        )
        return
    table = Table("id", "tenant", "name", "scopes", "created", "last used", "revoked")
    for key in keys:
        table.add_row(
            key.key_id,
            key.tenant_id,
            key.name,
            ",".join(sorted(key.scopes)),
            _when(key.created_at),
            _when(key.last_used_at),
            _when(key.revoked_at),
        )
    console.print(table)


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `likeness keys list`), or the key itself.")],
    database_url_option: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: the gateway refuses it from now on (within its key cache, 5 s by default)."""
    wanted = key_id_of(key_id)
    key = run_with_database(lambda url: revoke_key(url, wanted), database_url_option, data_dir)
    if key is None:
        errors.print(
            f"[red]likeness keys:[/red] no key {wanted!r}; `likeness keys list` shows the ids", highlight=False
        )
        raise typer.Exit(1)
    console.print(
        f"key {key.key_id} (tenant '{key.tenant_id}') is revoked as of {_when(key.revoked_at)}", highlight=False
    )
