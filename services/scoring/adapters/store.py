"""Scoring's I/O: images from object storage, reference embeddings cached in PostgreSQL."""

from __future__ import annotations

import io
from uuid import UUID

import asyncpg
from PIL import Image

from contracts import ImageRef
from infra.objects import ObjectStore


class StoredImages:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def load(self, ref: ImageRef) -> Image.Image:
        data = await self._store.get(ref.key)
        image = Image.open(io.BytesIO(data))
        image.load()
        return image


class PostgresEmbeddingCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, character_id: UUID, version: str, references_sha: str) -> bytes | None:
        data = await self._pool.fetchval(
            """SELECT embeddings FROM scoring.reference_embeddings
               WHERE character_id=$1 AND scorer_version=$2 AND references_sha=$3""",
            character_id,
            version,
            references_sha,
        )
        return None if data is None else bytes(data)

    async def put(self, character_id: UUID, version: str, references_sha: str, data: bytes) -> None:
        await self._pool.execute(
            """INSERT INTO scoring.reference_embeddings (character_id, scorer_version, references_sha, embeddings)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            character_id,
            version,
            references_sha,
            data,
        )
