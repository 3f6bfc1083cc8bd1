"""PostgreSQL through asyncpg: the pool and the plain-SQL migration runner."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TypeAlias

import asyncpg
import asyncpg.pool

# What handlers get: a plain connection or one borrowed from a pool.
DbConnection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

log = logging.getLogger(__name__)

INFRA_MIGRATIONS = Path(__file__).parent / "migrations"


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=60
    )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, owner: str, directory: Path) -> list[str]:
    """Apply `directory`'s *.sql files in name order, each once, each in its own transaction.

    Replicas starting together serialise on an advisory lock, so each file runs once.
    Returns the names applied now.
    """
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext('likeness-migrations'))")
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS public.schema_migrations (
                       owner text NOT NULL, name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (owner, name))"""
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations WHERE owner=$1", owner)}
            for path in sorted(directory.glob("*.sql")):  # noqa: ASYNC240 - a handful of files at start-up
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (owner, name) VALUES ($1, $2)", owner, path.name)
                log.info("applied migration %s/%s", owner, path.name)
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext('likeness-migrations'))")
    return applied


async def migrate_service(pool: asyncpg.Pool, service: str, directory: Path | None) -> None:
    """The shared messaging tables first, then the service's own schema."""
    await migrate(pool, "messaging", INFRA_MIGRATIONS)
    if directory is not None:
        await migrate(pool, service, directory)
