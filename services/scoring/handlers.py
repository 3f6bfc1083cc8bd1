"""Scoring's logic: compare a stored shot with its character's references."""

from __future__ import annotations

import hashlib
from typing import Protocol, TypeVar
from uuid import UUID

from PIL import Image

from contracts import ImageRef, ShotScore, ShotScored, ShotStored


class ReferenceSet(Protocol):
    """Opaque reference embeddings, computed once per character (see scorer.ReferenceEmbeddings)."""

    def to_bytes(self) -> bytes: ...


R = TypeVar("R", bound=ReferenceSet)


class AsyncScorer(Protocol[R]):
    """The models, behind an async face: CPU work happens off the event loop."""

    @property
    def version(self) -> str: ...

    async def embed_references(self, images: list[Image.Image]) -> R: ...

    def references_from_bytes(self, data: bytes) -> R: ...

    async def score(self, shot: Image.Image, references: R) -> ShotScore: ...


class ImageSource(Protocol):
    async def load(self, ref: ImageRef) -> Image.Image: ...


class EmbeddingCache(Protocol):
    async def get(self, character_id: UUID, version: str, references_sha: str) -> bytes | None: ...

    async def put(self, character_id: UUID, version: str, references_sha: str, data: bytes) -> None: ...


def references_digest(references: list[ImageRef]) -> str:
    return hashlib.sha256("".join(ref.sha256 for ref in references).encode()).hexdigest()


async def reference_embeddings(
    event: ShotStored, *, scorer: AsyncScorer[R], images: ImageSource, cache: EmbeddingCache
) -> R:
    """From the shared cache when another shot of the character computed them; else compute and share."""
    digest = references_digest(event.references)
    cached = await cache.get(event.character_id, scorer.version, digest)
    if cached is not None:
        return scorer.references_from_bytes(cached)
    computed = await scorer.embed_references([await images.load(ref) for ref in event.references])
    await cache.put(event.character_id, scorer.version, digest, computed.to_bytes())
    return computed


async def score_shot(
    event: ShotStored, *, scorer: AsyncScorer[R], images: ImageSource, cache: EmbeddingCache
) -> ShotScored:
    references = await reference_embeddings(event, scorer=scorer, images=images, cache=cache)
    score = await scorer.score(await images.load(event.image), references)
    return ShotScored.follow(event, shot_id=event.shot_id, character_id=event.character_id, score=score)
