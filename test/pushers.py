"""A test fleet: threads that push like vehicle bridges do (cumulative error counts per boot, retry by resending
the latest snapshot) and keep the ground truth of every error event, so tests can compare it with /metrics."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from support import push, wait_for, wire_snapshot


class VehiclePusher(threading.Thread):
    """One simulated vehicle: every `period_s` it may raise error events, then pushes its cumulative state.

    `url()` is asked before every push, so the fleet follows an aggregator restarted on a new port.
    A failed push is not queued: the next push carries the same cumulative counts (the bridge contract).
    """

    CODES = ("motor_stall", "lidar_timeout", "estop")

    def __init__(self, vehicle_id: str, token: str | None, url: Callable[[], str], period_s: float = 0.1) -> None:
        super().__init__(name=f"pusher-{vehicle_id}", daemon=True)
        self.vehicle_id = vehicle_id
        self.token = token
        self.url = url
        self.period_s = period_s
        self.boot_id = "boot-1"
        self.seq = 0
        self.boot_counts: dict[str, int] = {}
        self.truth: dict[str, int] = {}
        """Every error event raised since the start, across boots: what vehicle_errors_total must show."""
        self.acked_seq = -1
        self.failures = 0
        self.accepted = 0
        self.statuses: list[int] = []
        self._rng = random.Random(vehicle_id)
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def raise_errors(self) -> None:
        """Random error events (about one push in three carries a new one)."""
        with self._lock:
            if self._rng.random() < 0.35:
                code = self._rng.choice(self.CODES)
                self.boot_counts[code] = self.boot_counts.get(code, 0) + 1
                self.truth[code] = self.truth.get(code, 0) + 1

    def reboot(self, boot_id: str) -> None:
        """A vehicle reboot: a new boot_id, counts and seq from zero (the truth keeps everything)."""
        with self._lock:
            self.boot_id, self.seq, self.boot_counts = boot_id, 0, {}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self.seq += 1
            return wire_snapshot(self.vehicle_id, boot_id=self.boot_id, seq=self.seq, errors=dict(self.boot_counts))

    def push_once(self) -> int:
        wire = self.snapshot()
        try:
            status = push(self.url(), wire, self.token).status
        except (OSError, http.client.HTTPException):
            status = 0
        self.statuses.append(status)
        if status == 200:
            self.accepted += 1
            self.acked_seq = wire["seq"]
        else:
            self.failures += 1
        return status

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            self.raise_errors()
            self.push_once()
            next_at += self.period_s
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self, flush: bool = True, timeout: float = 30.0) -> None:
        """Stop pushing; with `flush`, push until the latest counts are acknowledged."""
        self._halt.set()
        self.join(timeout)
        if flush:
            wait_for(lambda: self.push_once() == 200, timeout, interval=0.2, what=f"{self.vehicle_id} final push")


def start_fleet(tokens: dict[str, str], url: Callable[[], str], period_s: float = 0.1) -> dict[str, VehiclePusher]:
    fleet = {vid: VehiclePusher(vid, tok, url, period_s) for vid, tok in tokens.items()}
    for pusher in fleet.values():
        pusher.start()
    return fleet
