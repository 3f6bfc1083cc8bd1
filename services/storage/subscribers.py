"""Storage's subscribers: one durable pull consumer per event it records."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, TypeVar

from faststream.nats import NatsMessage, NatsRouter

from contracts import (
    CharacterRequested,
    Event,
    HumanVoteCast,
    IdentityFailed,
    IdentityProgress,
    IdentityReady,
    RetakeShot,
    ShotFailed,
    ShotGenerated,
    ShotRequested,
    ShotScored,
)
from infra.bus import RetryLater, settle, subscribe
from infra.metrics import record_provider_cost, record_regeneration
from infra.runtime import Runtime
from services.storage import handlers
from services.storage.adapters.records import PostgresRecords
from services.storage.ports import Records
from services.storage.settings import StorageSettings

E = TypeVar("E", bound=Event)
E_contra = TypeVar("E_contra", bound=Event, contravariant=True)


class StorageHandler(Protocol[E_contra]):
    def __call__(self, event: E_contra, /, *, records: Records) -> Awaitable[list[Event]]: ...


def count_cost(event: Event, emitted: list[Event]) -> None:
    """A newly recorded identity's or shot's cost (a shot is new when storage announces it as stored), and the
    retakes the consistency gate asked for."""
    if isinstance(event, IdentityReady) or (isinstance(event, ShotGenerated) and emitted):
        record_provider_cost(event.provider, event.cost_usd)
    for retake in emitted:
        if isinstance(retake, RetakeShot):
            record_regeneration(retake.provider, retake.reason)


def build_router(runtime: Runtime, settings: StorageSettings | None = None) -> NatsRouter:
    router = NatsRouter()
    gate = (settings or StorageSettings()).gate()

    async def shot_scored(event: ShotScored, *, records: Records) -> list[Event]:
        return await handlers.on_shot_scored(event, records=records, gate=gate)

    async def record(event: E, name: str, handler: StorageHandler[E]) -> None:
        """One transaction: claim the event, update the records, log it, outbox what follows."""
        async with runtime.delivery.unit_of_work(event, runtime.delivery.consumer(name)) as work:
            if work.already_done:
                return
            records = PostgresRecords(work.conn)
            try:
                emitted = await handler(event, records=records)
            except handlers.ShotNotRecordedYet as early:
                raise RetryLater(str(early), delay_s=0.5) from early
            await records.log_events([event, *emitted], event.correlation_id)
            work.emit(*emitted)
        count_cost(event, emitted)  # committed, and the first time this event was recorded

    @subscribe(router, CharacterRequested, "storage-character-requested")
    async def on_character_requested(event: CharacterRequested, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "character-requested", handlers.on_character_requested))

    @subscribe(router, IdentityProgress, "storage-identity-progress")
    async def on_identity_progress(event: IdentityProgress, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "identity-progress", handlers.on_identity_progress))

    @subscribe(router, IdentityReady, "storage-identity-ready")
    async def on_identity_ready(event: IdentityReady, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "identity-ready", handlers.on_identity_ready))

    @subscribe(router, IdentityFailed, "storage-identity-failed")
    async def on_identity_failed(event: IdentityFailed, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "identity-failed", handlers.on_identity_failed))

    @subscribe(router, ShotRequested, "storage-shot-requested")
    async def on_shot_requested(event: ShotRequested, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "shot-requested", handlers.on_shot_requested))

    @subscribe(router, ShotGenerated, "storage-shot-generated")
    async def on_shot_generated(event: ShotGenerated, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "shot-generated", handlers.on_shot_generated))

    @subscribe(router, ShotScored, "storage-shot-scored")
    async def on_shot_scored(event: ShotScored, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "shot-scored", shot_scored))

    @subscribe(router, HumanVoteCast, "storage-human-vote")
    async def on_human_vote(event: HumanVoteCast, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "human-vote", handlers.on_human_vote))

    @subscribe(router, ShotFailed, "storage-shot-failed")
    async def on_shot_failed(event: ShotFailed, msg: NatsMessage) -> None:
        await settle(msg, event, record(event, "shot-failed", handlers.on_shot_failed))

    return router
