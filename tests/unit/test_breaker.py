"""A provider's circuit breaker: closed -> open -> half-open (one trial) -> closed or open again."""

from __future__ import annotations

import uuid

import pytest

from contracts import ShotParams
from infra.metrics import REGISTRY
from services.provider_adapter.breaker import BreakerProvider, BreakerSettings, CircuitBreaker
from services.provider_adapter.ports import PermanentProviderError, ShotRequest, TransientProviderError
from services.provider_adapter.providers.sim import SimProvider


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: float) -> CircuitBreaker:
    defaults = {"failures": 3, "window_s": 60.0, "window_min_calls": 100, "failure_rate": 0.5, "cool_down_s": 30.0}
    return CircuitBreaker(f"p-{uuid.uuid4().hex[:8]}", BreakerSettings(**{**defaults, **settings}), clock=clock)  # type: ignore[arg-type]


def gauge(provider: str) -> float | None:
    return REGISTRY.get_sample_value("likeness_breaker_state", {"provider": provider})


def test_k_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    clock = Clock()
    b = breaker(clock)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert (b.state, b.allow()) == ("closed", True)
    b.record_failure()
    assert (b.state, b.allow()) == ("open", False)
    assert b.retry_after_s() == 30.0
    assert gauge(b.provider) == 2


def test_after_the_cool_down_one_trial_goes_through_and_its_success_closes_it() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    b.record_failure()
    clock.now += 29.9
    assert b.allow() is False
    clock.now += 0.1
    assert b.state == "half_open"
    assert gauge(b.provider) == 1
    assert b.allow() is True  # the trial
    assert b.allow() is False  # only one at a time
    b.record_success()
    assert (b.state, b.allow(), gauge(b.provider)) == ("closed", True, 0)


def test_a_failed_trial_opens_it_for_another_cool_down() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    b.record_failure()
    clock.now += 30
    assert b.allow() is True
    clock.now += 5
    b.record_failure()
    assert b.state == "open"
    assert b.retry_after_s() == 30.0
    clock.now += 30
    assert b.allow() is True


def test_a_trial_that_never_reports_lets_another_through_after_a_cool_down() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    b.record_failure()
    clock.now += 30
    assert b.allow() is True
    clock.now += 29
    assert b.allow() is False
    clock.now += 1
    assert b.allow() is True


def test_a_failure_rate_over_the_window_opens_it_and_old_calls_fall_out_of_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failures=100, window_min_calls=4, failure_rate=0.5, window_s=60)
    b.record_failure()
    clock.now += 61  # that failure leaves the window
    b.record_success()
    b.record_failure()
    b.record_success()
    assert b.state == "closed"
    b.record_failure()  # 2 of the 4 calls in the window failed
    assert b.allow() is False  # open


def test_zero_failures_means_no_breaker() -> None:
    clock = Clock()
    b = breaker(clock, failures=0)
    for _ in range(10):
        b.record_failure()
    assert (b.state, b.allow()) == ("closed", True)


class Flaky(SimProvider):
    def __init__(self, *errors: Exception) -> None:
        super().__init__()
        self.errors = list(errors)

    async def start_shot(self, request: ShotRequest) -> str:
        if self.errors:
            raise self.errors.pop(0)
        return "job"


async def test_the_provider_wrapper_counts_transient_failures_only() -> None:
    clock = Clock()
    b = breaker(clock, failures=2)
    wrapped = BreakerProvider(Flaky(PermanentProviderError("no"), TransientProviderError("503")), b)
    request = ShotRequest(uuid.uuid4(), uuid.uuid4(), "sim:x", ShotParams(prompt="p"), [])
    with pytest.raises(PermanentProviderError):
        await wrapped.start_shot(request)
    with pytest.raises(TransientProviderError):
        await wrapped.start_shot(request)
    assert b.state == "closed"  # one transient failure; the refusal said nothing about the provider's health
    assert await wrapped.start_shot(request) == "job"
    assert (wrapped.name, wrapped.simulated) == ("sim", True)
