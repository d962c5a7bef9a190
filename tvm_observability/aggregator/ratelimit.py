"""Per-vehicle token buckets: a broken bridge pushing 1,000/s cannot starve the rest of the fleet.

Memory stays bounded by the admitted vehicles: a bucket is created only by `take`, which the ingest path calls
once a push has been admitted (authenticated, on the roster or within the unknown-vehicle cap, and applied),
and a bucket that has refilled completely is dropped (it is then the same as no bucket at all).
"""

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
        self._next_sweep = monotonic()
        self.reconfigure(settings)

    def reconfigure(self, settings: RateSettings) -> None:
        """The one place settings take effect, at construction and on reload; buckets keep their tokens."""
        self.settings = settings
        self.rate_hz = settings.rate_hz
        self.burst = float(settings.burst)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate_hz)

    def check(self, key: str) -> bool:
        """Whether `key` may push now; creates and changes nothing."""
        return self._tokens(key, self._monotonic()) >= 1.0

    def take(self, key: str) -> None:
        """Take one token from `key`'s bucket (after `check` said yes and the push was admitted)."""
        now = self._monotonic()
        self._buckets[key] = (self._tokens(key, now) - 1.0, now)
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop the buckets that are full again: idle keys cost nothing, whatever came and went."""
        rate, burst = self.rate_hz, self.burst
        self._buckets = {k: (t, last) for k, (t, last) in self._buckets.items() if t + (now - last) * rate < burst}
        self._next_sweep = now + burst / rate
