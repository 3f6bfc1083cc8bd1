"""The API keys table (schema `gateway`): created, listed and revoked by `likeness keys`, read by the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import asyncpg

from infra.db import migrate
from services.gateway.keys import ApiKey, IssuedKey, Scope, key_sha256, new_key

MIGRATIONS = Path(__file__).parent.parent / "migrations"


async def migrate_gateway(pool: asyncpg.Pool) -> None:
    """The gateway's own schema (the API keys); safe to run from every replica and from the CLI."""
    await migrate(pool, "gateway", MIGRATIONS)


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        scopes=frozenset(cast(list[Scope], row["scopes"])),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


class PostgresApiKeys:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: str, scopes: frozenset[Scope], name: str = "") -> IssuedKey:
        key_id, secret_key = new_key()
        row = await self._pool.fetchrow(
            """INSERT INTO gateway.api_keys (key_id, tenant_id, name, scopes, key_sha256)
                VALUES ($1, $2, $3, $4, $5)
                RETURNING key_id, tenant_id, name, scopes, created_at, revoked_at, last_used_at""",
            key_id,
            tenant_id,
            name,
            sorted(scopes),
            key_sha256(secret_key),
        )
        assert row is not None
        return IssuedKey(_api_key(row), secret_key)

    async def list(self, tenant_id: str | None = None) -> list[ApiKey]:
        rows = await self._pool.fetch(
            """SELECT key_id, tenant_id, name, scopes, created_at, revoked_at, last_used_at FROM gateway.api_keys
                WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id, created_at, key_id""",
            tenant_id,
        )
        return [_api_key(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (a second revoke keeps the first date). None if there is no such key."""
        row = await self._pool.fetchrow(
            """UPDATE gateway.api_keys SET revoked_at = coalesce(revoked_at, now())
                WHERE key_id = $1
                RETURNING key_id, tenant_id, name, scopes, created_at, revoked_at, last_used_at""",
            key_id,
        )
        return None if row is None else _api_key(row)

    async def find(self, digest: bytes) -> ApiKey | None:
        """The key with this hash; a live one is marked used (the gateway asks once per cache period)."""
        row = await self._pool.fetchrow(
            """UPDATE gateway.api_keys
                SET last_used_at = CASE WHEN revoked_at IS NULL THEN now() ELSE last_used_at END
                WHERE key_sha256 = $1
                RETURNING key_id, tenant_id, name, scopes, created_at, revoked_at, last_used_at""",
            digest,
        )
        return None if row is None else _api_key(row)
