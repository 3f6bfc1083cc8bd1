"""Scripted misbehaviour for the loopback fakes: rate limits, outages and slow answers, one per request."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.responses import Response


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour: wait `delay_s`, then answer `status` (None: answer normally after the wait)."""

    status: int | None = None
    retry_after: str | None = None
    delay_s: float = 0.0
    detail: str = "injected fault (fake)"
    processed: bool = False  # do the work first, then answer `status` (a fake that supports it: Astria's 504)

    @classmethod
    def rate_limited(cls, retry_after: str = "1") -> Fault:
        return cls(429, retry_after=retry_after, detail="Too many requests (fake)")

    @classmethod
    def unavailable(cls, status: int = 503) -> Fault:
        return cls(status, detail="Service unavailable (fake)")

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls(status, detail="Internal server error (fake)")

    @classmethod
    def timed_out_after_processing(cls) -> Fault:
        return cls(504, detail="Gateway timeout (fake): the work was done anyway", processed=True)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        return cls(None, delay_s=delay_s)


Answer = Callable[[Fault, Mapping[str, str] | None], Response]


class FaultScript:
    """Faults queued per endpoint, taken one per request (thread-safe: tests script, the server thread takes)."""

    def __init__(self) -> None:
        self._queued: dict[str, deque[Fault]] = {}
        self._lock = threading.Lock()

    def inject(self, endpoint: str, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        with self._lock:
            self._queued.setdefault(endpoint, deque()).extend(faults)

    def take(self, endpoint: str) -> Fault | None:
        with self._lock:
            queued = self._queued.get(endpoint)
            return queued.popleft() if queued else None

    async def meet(self, endpoint: str, answer: Answer) -> Response | None:
        """The next fault for `endpoint`, played: its wait, then its error answer (None: answer normally)."""
        fault = self.take(endpoint)
        return None if fault is None else await play(fault, answer)


async def play(fault: Fault, answer: Answer) -> Response | None:
    if fault.delay_s:
        await asyncio.sleep(fault.delay_s)
    if fault.status is None:
        return None
    return answer(fault, {"Retry-After": fault.retry_after} if fault.retry_after is not None else None)
