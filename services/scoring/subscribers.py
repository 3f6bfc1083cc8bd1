"""Scoring's subscriber: every stored shot gets a score, once per scorer key.

The durable consumer is named after the scorer's key. A scorer with a new key (new models,
weights or thresholds) therefore starts a consumer of its own, which (with `rescore=all`)
begins at the start of the stream: every stored ShotStored event is replayed to it and every
shot gets a new score beside its old ones. Claims and follow-up event ids carry the key too.
"""

from __future__ import annotations

import time

from faststream.nats import NatsMessage, NatsRouter
from nats.js.api import DeliverPolicy

from contracts import ShotScore, ShotStored
from infra.bus import settle, subscribe
from infra.metrics import record_scoring
from infra.runtime import Runtime
from services.scoring import handlers
from services.scoring.adapters.store import PostgresEmbeddingCache, StoredImages
from services.scoring.batching import MicroBatcher
from services.scoring.scorer import ShotToScore

DURABLE_PREFIX = "scoring-shot-stored"


def build_router(
    runtime: Runtime,
    scorer: handlers.AsyncScorer,
    *,
    key: str,
    batch_size: int = 8,
    rescore: str = "all",
) -> NatsRouter:
    router = NatsRouter()
    claim_as = f"shot-stored@{key}"
    batcher: MicroBatcher[ShotToScore, ShotScore] = MicroBatcher(
        lambda shots: scorer.score_batch(shots), max_size=batch_size
    )

    async def score(event: ShotStored) -> None:
        consumer = runtime.delivery.consumer(claim_as)
        if await runtime.delivery.is_processed(event, consumer):
            return
        started = time.perf_counter()
        scored = await handlers.score_shot(
            event,
            scorer=scorer,
            score=batcher.submit,
            images=StoredImages(runtime.store),
            cache=PostgresEmbeddingCache(runtime.pool),
        )
        record_scoring(time.perf_counter() - started)  # likeness_scoring_seconds: images, batch wait, models
        async with runtime.delivery.unit_of_work(event, consumer) as work:
            if not work.already_done:
                work.emit(scored)

    # Up to 2 x batch_size messages are handled at once: the shots of one batch meet in the batcher,
    # which scores them together on the model thread, while the next batch's images are fetched.
    @subscribe(
        router,
        ShotStored,
        f"{DURABLE_PREFIX}-{key}",
        title=f"{DURABLE_PREFIX}:{ShotStored.event_type()}",
        ack_wait_s=120.0,
        batch_size=batch_size,
        max_workers=2 * batch_size,  # the next batch is fetched and prepared while one is scored
        deliver_policy=DeliverPolicy.ALL if rescore == "all" else DeliverPolicy.NEW,
    )
    async def on_shot_stored(event: ShotStored, msg: NatsMessage) -> None:
        await settle(msg, event, score(event))

    return router
