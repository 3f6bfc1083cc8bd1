"""Replicas of a service share one durable pull consumer: every message handled once, by one of them."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from faststream.nats import NatsMessage, NatsRouter

from contracts import ShotParams, ShotRequested
from infra.bus import create_broker, declare_stream, publish_event, settle, subscribe
from infra.stack import StackEndpoints

pytestmark = pytest.mark.integration


async def test_two_replicas_split_the_work_without_duplicates(stack_endpoints: StackEndpoints) -> None:
    durable = f"replica-test-{uuid.uuid4().hex[:8]}"
    handled: Counter[tuple[str, uuid.UUID]] = Counter()
    character_id = uuid.uuid4()

    def replica(name: str) -> NatsRouter:
        router = NatsRouter()

        async def work(event: ShotRequested) -> None:
            handled[(name, event.shot_id)] += 1
            await asyncio.sleep(0.01)

        @subscribe(router, ShotRequested, durable)
        async def on_shot(event: ShotRequested, msg: NatsMessage) -> None:
            if event.correlation_id == character_id:
                await settle(msg, event, work(event))
            else:
                await msg.ack()  # other tests' shots

        return router

    brokers = []
    for name in ("a", "b"):
        broker = create_broker(stack_endpoints.nats_url, name=f"replica-{name}")
        broker.include_router(replica(name))
        brokers.append(broker)
    await brokers[0].connect()
    await declare_stream(brokers[0])
    for broker in brokers:
        await broker.start()
    shots = [
        ShotRequested(
            correlation_id=character_id,
            tenant_id="studio",
            shot_id=uuid.uuid4(),
            character_id=character_id,
            params=ShotParams(prompt=f"shot {i}"),
        )
        for i in range(40)
    ]
    try:
        for shot in shots:
            await publish_event(brokers[0], shot)
        for _ in range(200):
            if sum(handled.values()) >= len(shots):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for any duplicate to show up
    finally:
        for broker in brokers:
            await broker.stop()
    per_shot = Counter(shot_id for (_, shot_id) in handled.elements())
    assert sorted(per_shot) == sorted(s.shot_id for s in shots)
    assert set(per_shot.values()) == {1}
    replicas = {name for (name, _) in handled}
    assert replicas == {"a", "b"}, f"only {replicas} did any work"
