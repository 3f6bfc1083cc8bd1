"""Gather concurrent single requests into batches: one call of the batch function serves many."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """`await batcher.submit(item)` returns `run([.., item, ..])`'s answer for that item.

    A batch runs when `max_size` items are waiting, or `max_wait_s` after the first of them
    arrived. `run` must return one result per item, in order; if it raises, every item of
    that batch gets the error. Batches run one at a time, in order of arrival.
    """

    def __init__(
        self, run: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, max_size: int, max_wait_s: float = 0.01
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self._run = run
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.batch_sizes: list[int] = []

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if len(self._waiting) >= self._max_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting[: self._max_size], self._waiting[self._max_size :]
        if self._waiting:
            self._timer = asyncio.get_running_loop().call_later(self._max_wait_s, self._flush)
        if batch:
            task = asyncio.create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        async with self._lock:
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                return
            self.batch_sizes.append(len(live))
            try:
                results = await self._run([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except BaseException as error:  # cancelled too: no caller may wait forever
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                return
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
