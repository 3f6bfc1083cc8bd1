"""The per-key token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from services.gateway.rate_limit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_at_once_then_waits_for_the_refill() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, burst=3, clock=clock)

    assert [buckets.take("k") for _ in range(3)] == [None, None, None]
    refused = buckets.take("k")

    assert refused is not None
    assert refused.retry_after_s == pytest.approx(1.0)  # 60 a minute: one token a second
    assert refused.retry_after_header == "1"
    assert "60 requests a minute (bursts of 3)" in refused.message()
    assert "retry in 1 s" in refused.message()


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=30, burst=2, clock=clock)
    for _ in range(2):
        assert buckets.take("k") is None
    assert buckets.take("k") is not None

    clock.now += 1.0  # half a token at 30 a minute
    half_way = buckets.take("k")
    assert half_way is not None
    assert half_way.retry_after_s == pytest.approx(1.0)
    assert half_way.retry_after_header == "1"

    clock.now += 1.0
    assert buckets.take("k") is None

    clock.now += 3600  # an idle hour refills to the burst, not to 120
    assert [buckets.take("k") for _ in range(3)][2] is not None


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=1, burst=1, clock=clock)
    assert buckets.take("k") is None
    clock.now += 0.5
    refused = buckets.take("k")
    assert refused is not None
    assert refused.retry_after_s == pytest.approx(59.5)
    assert refused.retry_after_header == "60"


def test_refused_requests_do_not_dig_the_hole_deeper() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, burst=1, clock=clock)
    assert buckets.take("k") is None
    for _ in range(50):
        assert buckets.take("k") is not None
    clock.now += 1.0
    assert buckets.take("k") is None


def test_each_key_has_its_own_bucket() -> None:
    buckets = TokenBuckets(per_minute=60, burst=1, clock=Clock())
    assert buckets.take("a") is None
    assert buckets.take("a") is not None
    assert buckets.take("b") is None


def test_zero_per_minute_turns_the_limit_off() -> None:
    buckets = TokenBuckets(per_minute=0, burst=1, clock=Clock())
    assert all(buckets.take("k") is None for _ in range(1000))


def test_a_bucket_needs_room_for_one_request() -> None:
    with pytest.raises(ValueError, match="burst >= 1"):
        TokenBuckets(per_minute=60, burst=0)
