"""slices.pause: fleet-wide work comes back to the event loop only after a turn with little else to do (pushes go
first), and never later than its deadline allows."""

from __future__ import annotations

import asyncio
import time

from tvm_observability.aggregator import slices


class BusyTurns:
    """Other work on the loop: one callback per turn, each holding the loop for three times BUSY_TURN_S, for
    `turns` turns (None: until stopped)."""

    def __init__(self, turns: int | None) -> None:
        self.left = turns
        self.ran = 0
        self.stopped = False
        asyncio.get_running_loop().call_soon(self.turn)

    def turn(self) -> None:
        if self.stopped or self.left == 0:
            return
        held_until = time.perf_counter() + 3 * slices.BUSY_TURN_S
        while time.perf_counter() < held_until:
            pass
        self.ran += 1
        if self.left is not None:
            self.left -= 1
        asyncio.get_running_loop().call_soon(self.turn)

    @property
    def running(self) -> bool:
        return not self.stopped and self.left != 0


async def test_pause_waits_out_busy_turns() -> None:
    busy = BusyTurns(turns=8)
    await slices.pause(until=time.perf_counter() + 60.0)
    assert not busy.running and busy.ran == 8  # back only once the loop had a turn to spare


async def test_pause_on_a_quiet_loop_takes_one_turn() -> None:
    order: list[str] = []
    asyncio.get_running_loop().call_soon(order.append, "other work")
    await slices.pause(until=time.perf_counter() + 60.0)
    order.append("after the pause")
    assert order == ["other work", "after the pause"]


async def test_pause_ends_at_its_deadline_on_a_loop_that_is_never_quiet() -> None:
    busy = BusyTurns(turns=None)
    until = time.perf_counter() + 0.05
    await slices.pause(until)
    try:
        assert busy.running  # the loop never had a quiet turn: the deadline, not the load, ended the pause
        assert time.perf_counter() >= until
    finally:
        busy.stopped = True


async def test_pause_past_its_deadline_takes_one_turn_however_busy() -> None:
    busy = BusyTurns(turns=None)
    try:
        await slices.pause(until=0.0)
        assert busy.ran == 1
    finally:
        busy.stopped = True
