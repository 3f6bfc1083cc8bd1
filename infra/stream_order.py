"""A consumer group reads history in the stream's order, across all of a service's consumers.

A service has one durable consumer per event type, and live those consumers meet events in the order
they happen: an event's effects are published only after it was handled. A consumer group that reads
weeks of history (`likeness replay --fresh`) has no such pacing: each consumer races through its own
subject, so storage could meet a shot before the character it belongs to, or a score before its shot,
and record something other than what happened. Under a group, `settle` therefore holds a message until
none of the group's consumers in this process (its own included: FastStream handles a fetched batch
concurrently) still has an unacked message earlier in the stream.

The check asks JetStream (each other consumer's ack floor and pending counts, and the first message on
its subject after that floor), so it costs a few loopback requests per message: fine for a rebuild,
and the reason it applies to groups only. A message held longer than `max_wait_s` goes ahead with a
warning (a retried message far back could otherwise hold the group forever); held messages are kept
alive with in-progress acks, so they are not redelivered while they wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import STREAM_NAME

log = logging.getLogger(__name__)


class StreamOrder:
    def __init__(
        self, js: JetStreamContext, durables: dict[str, str], *, poll_s: float = 0.02, max_wait_s: float = 120.0
    ) -> None:
        self._js = js
        self._durables = durables  # durable -> subject, of one consumer group (filled as routers are built)
        self._poll_s = poll_s
        self._max_wait_s = max_wait_s

    async def first_unacked(self, durable: str, subject: str) -> int | None:
        """The stream sequence of `durable`'s earliest message not yet acked, or None if it has none; 0 while the
        consumer does not exist yet (its subscriber has not started: it may begin anywhere, so wait for it)."""
        try:
            info = await self._js.consumer_info(STREAM_NAME, durable)
        except NotFoundError:
            return 0
        if not info.num_pending and not info.num_ack_pending:
            return None
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        try:
            found = await self._js.get_msg(STREAM_NAME, seq=floor + 1, subject=subject, next=True)
        except NotFoundError:
            return None
        return found.seq

    async def is_turn_of(self, seq: int) -> bool:
        """No consumer of the group (this message's own included: it may handle a batch at once) has an
        earlier message still unacked). A group of one consumer (scoring's) has no order to keep between
        consumers, and holding its batch back one message at a time would only slow it down."""
        if len(self._durables) < 2:
            return True
        for durable, subject in list(self._durables.items()):
            earliest = await self.first_unacked(durable, subject)
            if earliest is not None and earliest < seq:
                return False
        return True

    async def wait_turn(self, consumer: str, seq: int, keep_alive: Callable[[], Awaitable[None]]) -> None:
        started = last_alive = time.monotonic()
        while not await self.is_turn_of(seq):
            now = time.monotonic()
            if now - started > self._max_wait_s:
                log.warning(
                    "stream order: message %d of %s waited %.0f s; handling it out of order",
                    seq,
                    consumer,
                    now - started,
                )
                return
            if now - last_alive > 5.0:
                await keep_alive()
                last_alive = now
            await asyncio.sleep(self._poll_s)
