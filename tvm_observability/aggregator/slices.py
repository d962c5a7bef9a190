"""Work over the whole fleet (a /metrics scrape, a state-file image) cut into slices of bounded time, so that the
event loop answers pushes in between: a fleet of any size never holds a push for longer than one slice, and pushes
go first (`pause`).

Slices are measured in time, not in vehicles: what one vehicle costs varies with its state (a vehicle whose text
is cached costs a tenth of one that changed) and with the machine, and near saturation every millisecond a push
waits behind a slice is multiplied by the queue it lets build up (docs/benchmarks.md, "Notes").
"""

from __future__ import annotations

import asyncio
import time

SLICE_S = 0.001
"""Work done between two returns to the event loop. A push arriving during a slice waits for it and for the pushes
queued ahead of it: at 85-90 % load the loop turned once per ~20 ms during a 5,000-vehicle scrape, which still
ended within a few seconds; half-millisecond slices were worse (each pause costs), 2 ms ones no better."""


class Slices:
    """A clock for one piece of fleet-wide work: `over()` is true once the current slice has used its time; the
    caller then returns to the event loop and calls `restart()` when it resumes."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self.restart()

    def over(self) -> bool:
        return time.perf_counter() >= self._until

    def restart(self) -> None:
        self._until = time.perf_counter() + SLICE_S


BUSY_TURN_S = 0.002
"""A turn of the event loop that ran at least this much other work (pushes) had work queued: fleet-wide work then
waits for a quieter turn before its next slice, instead of adding a slice to every busy turn."""


async def pause(until: float) -> None:
    """Return to the event loop between two slices, and come back after the first turn that ran less than
    BUSY_TURN_S of other work, or after the first turn once `until` (time.perf_counter()) has passed.

    Near saturation a slice in every turn lengthens every turn, and each longer turn lets more pushes queue; waiting
    for a quiet turn runs the slices in the loop's spare time instead. `until` bounds the wait: an overloaded loop
    has no quiet turn, and the work must still end."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0)
        if time.perf_counter() - started < BUSY_TURN_S or started >= until:
            return
