"""Per-vehicle token buckets: a broken bridge pushing 1,000/s cannot starve the rest of the fleet."""

from __future__ import annotations

from collections.abc import Callable


class RateLimiter:
    """Allows `rate_hz` pushes per second per key on average, with bursts up to `burst`."""

    def __init__(self, rate_hz: float, burst: int, monotonic: Callable[[], float]) -> None:
        self.rate_hz = rate_hz
        self.burst = float(burst)
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        """Take one token from `key`'s bucket; False when it is empty."""
        now = self._monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate_hz)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True
