"""Scoring's logic: compare a stored shot with its character's references."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol
from uuid import UUID

from PIL import Image

from contracts import ImageRef, ShotScore, ShotScored, ShotStored
from services.scoring.scorer import ReferenceEmbeddings, ShotToScore


class AsyncScorer(Protocol):
    """The models, behind an async face: CPU work happens off the event loop."""

    @property
    def version(self) -> str:
        """Cache key for reference embeddings: the models that make them."""
        ...

    @property
    def key(self) -> str:
        """The scorer's key (version, models, thresholds): a shot gets one score per key."""
        ...

    async def embed_references(self, images: list[Image.Image]) -> ReferenceEmbeddings: ...

    def references_from_bytes(self, data: bytes) -> ReferenceEmbeddings: ...

    async def score_batch(self, shots: Sequence[ShotToScore]) -> list[ShotScore]: ...


class ImageSource(Protocol):
    async def load(self, ref: ImageRef) -> Image.Image: ...


class EmbeddingCache(Protocol):
    async def get(self, character_id: UUID, version: str, references_sha: str) -> bytes | None: ...

    async def put(self, character_id: UUID, version: str, references_sha: str, data: bytes) -> None: ...


ScoreOne = Callable[[ShotToScore], Awaitable[ShotScore]]
"""Scores one shot; the service passes a MicroBatcher's submit, which gathers concurrent calls into batches."""


def references_digest(references: list[ImageRef]) -> str:
    return hashlib.sha256("".join(ref.sha256 for ref in references).encode()).hexdigest()


async def reference_embeddings(
    event: ShotStored, *, scorer: AsyncScorer, images: ImageSource, cache: EmbeddingCache
) -> ReferenceEmbeddings:
    """From the shared cache when another shot of the character computed them; else compute and share."""
    digest = references_digest(event.references)
    cached = await cache.get(event.character_id, scorer.version, digest)
    if cached is not None:
        return scorer.references_from_bytes(cached)
    computed = await scorer.embed_references([await images.load(ref) for ref in event.references])
    await cache.put(event.character_id, scorer.version, digest, computed.to_bytes())
    return computed


async def score_shot(
    event: ShotStored, *, scorer: AsyncScorer, score: ScoreOne, images: ImageSource, cache: EmbeddingCache
) -> ShotScored:
    """The shot's score under this scorer's key; its event id follows from the cause and the key,
    so scoring one ShotStored again with the same scorer makes the same event, and with a new
    scorer (a re-scoring) a new one."""
    references = await reference_embeddings(event, scorer=scorer, images=images, cache=cache)
    shot = ShotToScore(image=await images.load(event.image), references=references, prompt=event.prompt)
    return ShotScored.follow(
        event,
        key=scorer.key,
        shot_id=event.shot_id,
        character_id=event.character_id,
        score=await score(shot),
        take=event.take,
    )
