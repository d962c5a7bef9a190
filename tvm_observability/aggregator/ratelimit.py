"""Per-vehicle token buckets: a broken bridge pushing 1,000/s cannot starve the rest of the fleet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateSettings:
    """What the rate limiter takes from the configuration."""

    rate_hz: float = 10.0
    """Pushes per second per key on average."""
    burst: int = 20
    """Pushes a key may send at once before the rate applies."""


class RateLimiter:
    """Allows `rate_hz` pushes per second per key on average, with bursts up to `burst`."""

    def __init__(self, settings: RateSettings, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self.reconfigure(settings)

    def reconfigure(self, settings: RateSettings) -> None:
        """The one place settings take effect, at construction and on reload; buckets keep their tokens."""
        self.settings = settings
        self.rate_hz = settings.rate_hz
        self.burst = float(settings.burst)

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
