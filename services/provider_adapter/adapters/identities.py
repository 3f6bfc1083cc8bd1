"""Identity jobs and waiting shots in PostgreSQL (schema `provider`), bound to one transaction."""

from __future__ import annotations

import json
from uuid import UUID

from contracts import ImageRef, ShotRequested
from infra.db import DbConnection
from services.provider_adapter.ports import IdentityRecord


class PostgresFallbackIdentities:
    """Identities built with a fallback (instant-reference) provider, one per character and provider."""

    def __init__(self, conn: DbConnection) -> None:
        self._conn = conn

    async def find(self, character_id: UUID, provider: str) -> tuple[str, str | None] | None:
        """The saved (job id, identity ref) of the character's identity with `provider`, if one was started."""
        row = await self._conn.fetchrow(
            "SELECT job_id, identity_ref FROM provider.fallback_identities WHERE character_id=$1 AND provider=$2",
            character_id,
            provider,
        )
        return None if row is None else (row["job_id"], row["identity_ref"])

    async def save_job(self, character_id: UUID, provider: str, tenant_id: str, job_id: str) -> str:
        """Save the job before waiting on it; the job id kept (a racing replica's, if it saved first)."""
        await self._conn.execute(
            """INSERT INTO provider.fallback_identities (character_id, provider, tenant_id, job_id)
               VALUES ($1, $2, $3, $4) ON CONFLICT (character_id, provider) DO NOTHING""",
            character_id,
            provider,
            tenant_id,
            job_id,
        )
        kept = await self.find(character_id, provider)
        assert kept is not None
        return kept[0]

    async def mark_ready(self, character_id: UUID, provider: str, identity_ref: str) -> None:
        await self._conn.execute(
            "UPDATE provider.fallback_identities SET identity_ref=$3 WHERE character_id=$1 AND provider=$2",
            character_id,
            provider,
            identity_ref,
        )


class PostgresIdentities:
    def __init__(self, conn: DbConnection) -> None:
        self._conn = conn

    async def find_by_provider_job(self, provider: str, provider_job_id: str) -> tuple[UUID, str] | None:
        """The (character id, tenant id) whose saved job id ends in `:<provider_job_id>`, for that provider."""
        row = await self._conn.fetchrow(
            """SELECT character_id, tenant_id FROM provider.identities
               WHERE provider=$1 AND starts_with(job_id, $1 || ':') AND right(job_id, length($2) + 1) = ':' || $2
               ORDER BY created_at DESC LIMIT 1""",
            provider,
            provider_job_id,
        )
        return None if row is None else (row["character_id"], row["tenant_id"])

    async def lock(self, character_id: UUID, tenant_id: str) -> IdentityRecord:
        await self._conn.execute(
            """INSERT INTO provider.identities (character_id, tenant_id, status)
               VALUES ($1, $2, 'awaiting_references') ON CONFLICT (character_id) DO NOTHING""",
            character_id,
            tenant_id,
        )
        row = await self._conn.fetchrow(
            """SELECT character_id, tenant_id, provider, status, job_id, identity_ref, reference_images, failure
               FROM provider.identities WHERE character_id=$1 FOR UPDATE""",
            character_id,
        )
        assert row is not None
        return IdentityRecord(
            character_id=row["character_id"],
            tenant_id=row["tenant_id"],
            provider=row["provider"],
            status=row["status"],
            job_id=row["job_id"],
            identity_ref=row["identity_ref"],
            references=[ImageRef.model_validate(r) for r in row["reference_images"] or []],
            failure=row["failure"],
        )

    async def begin(self, character_id: UUID, provider: str, strategy: str, references: list[ImageRef]) -> None:
        await self._conn.execute(
            """UPDATE provider.identities SET provider=$2, strategy=$3, reference_images=$4::text::jsonb,
                   status='pending', updated_at=now()
               WHERE character_id=$1 AND status='awaiting_references'""",
            character_id,
            provider,
            strategy,
            json.dumps([r.model_dump(mode="json") for r in references]),
        )

    async def set_job_id(self, character_id: UUID, job_id: str) -> None:
        await self._conn.execute(
            "UPDATE provider.identities SET job_id=$2, updated_at=now() WHERE character_id=$1", character_id, job_id
        )

    async def mark_ready(self, character_id: UUID, identity_ref: str) -> None:
        await self._conn.execute(
            """UPDATE provider.identities SET status='ready', identity_ref=$2, updated_at=now()
               WHERE character_id=$1""",
            character_id,
            identity_ref,
        )

    async def mark_failed(self, character_id: UUID, reason: str) -> None:
        await self._conn.execute(
            "UPDATE provider.identities SET status='failed', failure=$2, updated_at=now() WHERE character_id=$1",
            character_id,
            reason,
        )

    async def add_waiting(self, shot: ShotRequested) -> None:
        await self._conn.execute(
            """INSERT INTO provider.waiting_shots (shot_id, character_id, request)
               VALUES ($1, $2, $3::text::jsonb) ON CONFLICT DO NOTHING""",
            shot.shot_id,
            shot.character_id,
            shot.model_dump_json(),
        )

    async def take_waiting(self, character_id: UUID) -> list[ShotRequested]:
        rows = await self._conn.fetch(
            """DELETE FROM provider.waiting_shots WHERE character_id=$1 RETURNING request, created_at""",
            character_id,
        )
        ordered = sorted(rows, key=lambda row: row["created_at"])
        return [ShotRequested.model_validate(row["request"]) for row in ordered]
