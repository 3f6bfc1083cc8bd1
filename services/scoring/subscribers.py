"""Scoring's subscriber: every stored shot gets a score, once."""

from __future__ import annotations

from typing import Any

from faststream.nats import NatsMessage, NatsRouter

from contracts import ShotStored
from infra.bus import settle, subscribe
from infra.runtime import Runtime
from services.scoring import handlers
from services.scoring.adapters.store import PostgresEmbeddingCache, StoredImages


def build_router(runtime: Runtime, scorer: handlers.AsyncScorer[Any]) -> NatsRouter:
    router = NatsRouter()

    async def score(event: ShotStored) -> None:
        consumer = runtime.delivery.consumer("shot-stored")
        if await runtime.delivery.is_processed(event, consumer):
            return
        scored = await handlers.score_shot(
            event,
            scorer=scorer,
            images=StoredImages(runtime.store),
            cache=PostgresEmbeddingCache(runtime.pool),
        )
        async with runtime.delivery.unit_of_work(event, consumer) as work:
            if not work.already_done:
                work.emit(scored)

    @subscribe(router, ShotStored, "scoring-shot-stored", ack_wait_s=120.0)
    async def on_shot_stored(event: ShotStored, msg: NatsMessage) -> None:
        await settle(msg, event, score(event))

    return router
