"""The vehicle's own view of its link to the aggregator: pure logic, no sockets, no ROS; clocks injected.

The live pusher tells `LinkTracker` the outcome of every push (with the round-trip time of the accepted ones);
the node tells it the vehicle's last known position each period and puts `report()` into every snapshot, so the
view travels to the aggregator, live or, for the snapshots built while the link was down, through the journal.

An outage begins with the first failed push that may succeed on retry (no answer, timeout, 408/429/5xx) while
the link was up (or before any push succeeded) and ends with the next accepted push. A refusal for good (401,
403, 422, ...) is a failed attempt but no outage: the link carried the answer. The counts are cumulative for
the bridge's boot, like `errors`, so a lost snapshot loses nothing; the outage in progress counts from its
start (the journalled snapshots show it growing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..model import LinkOutage, LinkReport, Position


class LinkTracker:
    """Thread-safe: the pusher's thread records outcomes, the node's thread feeds positions and reads reports."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._latitude: float | None = None
        self._longitude: float | None = None
        self._failed = 0
        self._outages = 0
        self._closed_outage_s = 0.0
        self._outage_began: float | None = None
        """Monotonic start of the outage in progress; None while the link is up."""
        self._last_outage: LinkOutage | None = None
        self._rtt_s: float | None = None

    def on_position(self, position: Position | None) -> None:
        """The vehicle's position now: a fix replaces the last known one; none keeps it (the last known)."""
        if position is None or not position.fix or position.latitude is None or position.longitude is None:
            return
        with self._lock:
            self._latitude, self._longitude = position.latitude, position.longitude

    def succeeded(self, rtt_s: float) -> None:
        """A push was accepted after `rtt_s` seconds: ends the outage in progress, if any."""
        with self._lock:
            self._rtt_s = max(0.0, rtt_s)
            if self._outage_began is None or self._last_outage is None:
                return
            self._closed_outage_s += max(0.0, self._clock() - self._outage_began)
            self._outage_began = None
            ended = self._last_outage
            self._last_outage = LinkOutage(
                ended.started_at, self._wall_clock(), ended.start_lat, ended.start_lon, self._latitude, self._longitude
            )

    def failed(self, *, retryable: bool) -> None:
        """A push failed; `retryable`: without an answer that proves the link works (see the module doc)."""
        with self._lock:
            self._failed += 1
            if not retryable or self._outage_began is not None:
                return
            self._outage_began = self._clock()
            self._outages += 1
            self._last_outage = LinkOutage(self._wall_clock(), None, self._latitude, self._longitude)

    def report(self) -> LinkReport:
        """The view now, for the next snapshot."""
        with self._lock:
            ongoing = 0.0 if self._outage_began is None else max(0.0, self._clock() - self._outage_began)
            return LinkReport(
                failed_attempts_total=self._failed,
                outages_total=self._outages,
                outage_seconds_total=self._closed_outage_s + ongoing,
                rtt_s=self._rtt_s,
                last_outage=self._last_outage,
            )
