"""A circuit breaker per provider: stop sending new shots to a provider that keeps failing.

closed -> open after `failures` consecutive transient failures (429, 5xx, time-outs, jobs the provider lost),
or when, over the last `window_s`, at least `window_min_calls` calls were made and `failure_rate` or more of
them failed. Open for `cool_down_s`; then half-open: one trial shot goes through, and its outcome closes the
breaker (success) or opens it again for another cool-down (failure). A trial that reports nothing within a
cool-down (its worker stopped) lets the next one through. While open, the outcomes of jobs submitted before
it opened change nothing.

Only shots are gated, and only new submissions (`ProviderWork.generate_shot` asks before submitting; a job
already submitted is always resumed). A refusal (PermanentProviderError) says nothing about the provider's
health and counts neither way. State lives in this process: each replica keeps its own breakers, and a
restart closes them all. `likeness_breaker_state{provider}` shows each (0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from infra.metrics import record_breaker_state
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    ProgressCallback,
    Provider,
    ShotRequest,
    TransientProviderError,
)

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


@dataclass(frozen=True)
class BreakerSettings:
    failures: int = 5  # consecutive transient failures that open the breaker; 0: breakers off
    window_s: float = 60.0
    window_min_calls: int = 10
    failure_rate: float = 0.5
    cool_down_s: float = 30.0


class CircuitBreaker:
    def __init__(self, provider: str, settings: BreakerSettings, *, clock: Clock = time.monotonic) -> None:
        self.provider = provider
        self.settings = settings
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._opened_at = 0.0
        self._trial_at: float | None = None  # when the half-open trial was let through
        record_breaker_state(provider, "closed")

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() >= self._opened_at + self.settings.cool_down_s:
            self._move("half_open")
        return self._state

    def allow(self) -> bool:
        """May a new shot be submitted now? In half-open, True for one trial at a time."""
        if self.settings.failures <= 0:
            return True
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._trial_at is None or now >= self._trial_at + self.settings.cool_down_s:
            self._trial_at = now
            return True
        return False

    def retry_after_s(self) -> float:
        """How long until the breaker lets a trial through (0 when it would now)."""
        if self._state != "open":
            return (
                0.0 if self._trial_at is None else max(0.0, self._trial_at + self.settings.cool_down_s - self._clock())
            )
        return max(0.0, self._opened_at + self.settings.cool_down_s - self._clock())

    def record_success(self) -> None:
        """A shot came back. While open (a job submitted before it opened, finishing now) it changes nothing:
        only the cool-down, then a trial, closes the breaker."""
        self._consecutive = 0
        self._remember(failed=False)
        if self.state == "half_open":
            self._move("closed")

    def record_failure(self) -> None:
        self._consecutive += 1
        self._remember(failed=True)
        if self.settings.failures <= 0:
            return
        if self._state == "half_open" or (self._state == "closed" and self._tripped()):
            self._opened_at = self._clock()
            self._move("open")

    def _tripped(self) -> bool:
        if self._consecutive >= self.settings.failures:
            return True
        calls = len(self._calls)
        failed = sum(failed for _, failed in self._calls)
        return calls >= self.settings.window_min_calls and failed / calls >= self.settings.failure_rate

    def _remember(self, *, failed: bool) -> None:
        now = self._clock()
        self._calls.append((now, failed))
        while self._calls and self._calls[0][0] < now - self.settings.window_s:
            self._calls.popleft()

    def _move(self, state: BreakerState) -> None:
        if state == self._state:
            return
        log.warning("provider %s: circuit breaker %s -> %s", self.provider, self._state, state)
        self._state = state
        self._trial_at = None
        if state == "closed":
            self._calls.clear()
        record_breaker_state(self.provider, state)


class Breakers:
    """One breaker per provider, made on first use (this process's only)."""

    def __init__(self, settings: BreakerSettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, provider: str) -> CircuitBreaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = self._breakers[provider] = CircuitBreaker(provider, self.settings, clock=self._clock)
        return breaker


class BreakerProvider:
    """A provider whose shot calls tell its breaker how they went: a transient failure (429, 5xx, time-out, a
    job that ended without an image) counts against it, an image for it; anything else counts neither way."""

    def __init__(self, provider: Provider, breaker: CircuitBreaker) -> None:
        self._provider = provider
        self.breaker = breaker
        self.name = provider.name
        self.simulated = provider.simulated

    def available(self) -> bool:
        return self._provider.available()

    async def create_identity(self, request: IdentityRequest) -> str:
        return await self._provider.create_identity(request)

    async def identity_status(self, job_id: str) -> IdentityStatus:
        return await self._provider.identity_status(job_id)

    async def start_shot(self, request: ShotRequest) -> str:
        try:
            return await self._provider.start_shot(request)
        except TransientProviderError:
            self.breaker.record_failure()
            raise

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        try:
            image = await self._provider.finish_shot(job_id, request, on_progress)
        except TransientProviderError:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return image
