"""A provider's concurrency slot held from a shot's submission to the end of waiting on it.

`start_shot` and `finish_shot` are two calls (the job id is saved between them), but a slot bounds
the jobs in flight at the provider, so it is taken in `start_shot` and given back when `finish_shot`
ends. What `start_shot` learnt that the job id does not carry (the submit answer, an open websocket,
when it was submitted) is kept here for `finish_shot` in the same process. A job resumed after a
restart has nothing here: `finish_shot` then takes a slot of its own and rebuilds what it needs from
the job id. A job that is never finished here keeps its slot until a later `finish_shot` of that job
id (a redelivery resuming it) takes it over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

Detail = TypeVar("Detail")
Clock = Callable[[], float]


@dataclass(frozen=True)
class Held(Generic[Detail]):
    """What `finish_shot` starts from: the submit's detail (None after a restart) and when the wait began."""

    detail: Detail | None
    started: float


class HeldJobs(Generic[Detail]):
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, Held[Detail]] = {}

    async def submit(self, slots: asyncio.Semaphore, submit: Callable[[], Awaitable[tuple[str, Detail]]]) -> str:
        """Take a slot, run `submit` (which returns the job id and its detail), keep the slot for the job."""
        await slots.acquire()
        try:
            started = self._clock()
            job_id, detail = await submit()
        except BaseException:
            slots.release()
            raise
        self._held[job_id] = Held(detail, started)
        return job_id

    @asynccontextmanager
    async def waiting(self, slots: asyncio.Semaphore, job_id: str) -> AsyncIterator[Held[Detail]]:
        """The job's slot for the wait (the one `submit` kept, else a new one), given back at the end."""
        held = self._held.pop(job_id, None)
        if held is None:
            await slots.acquire()
            held = Held(None, self._clock())
        try:
            yield held
        finally:
            slots.release()
