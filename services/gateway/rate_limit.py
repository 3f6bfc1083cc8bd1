"""Per-key rate limits: one token bucket per API key, kept in the gateway process.

Each replica keeps its own buckets, so N replicas behind a load balancer allow up to N times the limit.
Only keys the gateway accepted get a bucket, so their number is bounded by the keys that exist.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Throttled:
    """A refused request: when to try again, and the limit that refused it."""

    retry_after_s: float
    per_minute: float
    burst: int

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1 (the Retry-After header takes no fractions)."""
        return str(max(1, math.ceil(self.retry_after_s)))

    def message(self) -> str:
        return (
            f"rate limit: this API key may make {self.per_minute:g} requests a minute (bursts of {self.burst}); "
            f"retry in {self.retry_after_header} s"
        )


class TokenBuckets:
    """Each key holds up to `burst` tokens, refilled at `per_minute` a minute; a request takes one.

    `per_minute=0` turns the limit off.
    """

    def __init__(self, *, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 0 or burst < 1:
            raise ValueError("the rate limit needs per_minute >= 0 and burst >= 1")
        self.per_minute = per_minute
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str) -> Throttled | None:
        """Spend one of `key`'s tokens; None if there was one, else when the next one comes."""
        if self.per_minute == 0:
            return None
        rate_per_s = self.per_minute / 60.0
        now = self._clock()
        tokens, counted_at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted_at) * rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return Throttled((1.0 - tokens) / rate_per_s, self.per_minute, self.burst)
