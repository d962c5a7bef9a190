"""Load generator: N simulated vehicles pushing over real HTTP/1.1 keep-alive connections (loopback only).

Open loop: vehicle i pushes at start + phase_i + k/rate, whatever happened before, and a push's latency is
measured from its *scheduled* time to the end of its response, so a server that falls behind shows it in
the latency (no coordinated omission). Closed loop (`saturate=True`): every vehicle pushes again as soon as
its previous push is answered, to find the most the server can take.

A deliberately small client (asyncio protocol, pre-built requests, uvloop when installed) so one core of
load generator can drive ~10,000 pushes/s; bounded in vehicles, time and per-request timeout.

    python -m bench.loadgen --url http://127.0.0.1:PORT --target aggregator --tokens tokens.json \\
        --vehicles 500 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tvm_observability import codec
from tvm_observability.model import DEFAULT_VEHICLE_STATUSES, OFFLINE_STATUS, ROUTING_HEADER, UNKNOWN_STATUS

MAX_VEHICLES = 20_000


def ramp_seconds(vehicles: int) -> float:
    """How long connections ramp up by default: ~2,000 new connections/s, so aiohttp's default listen backlog
    (128) is not overrun."""
    return max(2.0, vehicles / 2000)


MAX_DURATION_S = 900.0
REQUEST_TIMEOUT_S = 10.0


# -- payloads ------------------------------------------------------------------------------------


def vehicle_id(i: int) -> str:
    return f"veh-{i:05d}"


class Vehicle:
    """One simulated robot: a realistic schema-v1 snapshot that drifts a little on every push."""

    def __init__(self, i: int, boot_id: str) -> None:
        rng = random.Random(i)
        self.id = vehicle_id(i)
        self.seq = 0
        self.wire: dict[str, Any] = {
            "v": 1,
            "vehicle_id": self.id,
            "boot_id": boot_id,
            "seq": 0,
            "sent_at": 0.0,
            "status": rng.choice(["idle", "on_mission", "charging"]),
            "battery": {"percentage": rng.uniform(20, 100), "voltage": 25.2, "charging": False, "age_s": 0.4},
            "position": {
                "latitude": 52.52 + rng.uniform(-0.05, 0.05),
                "longitude": 13.405 + rng.uniform(-0.05, 0.05),
                "altitude": 34.0,
                "fix": True,
                "age_s": 0.2,
            },
            "pose": {
                "x": rng.uniform(-50, 50),
                "y": rng.uniform(-50, 50),
                "yaw": 1.57,
                "speed": 0.8,
                "frame_id": "odom",
                "age_s": 0.05,
            },
            "sensors": {
                "lidar": {"status": "ok", "rate_hz": 10.0, "message": ""},
                "camera": {"status": "ok", "rate_hz": 30.0, "message": ""},
            },
            "errors": {"E_BUMPER": 1} if i % 10 == 0 else {},
        }

    def advance(self) -> dict[str, Any]:
        """The next snapshot: seq+1, sent now, the robot moved a little."""
        self.seq += 1
        w = self.wire
        w["seq"] = self.seq
        w["sent_at"] = time.time()
        pose = w["pose"]
        pose["x"] = round(pose["x"] + 0.08, 3)
        pose["y"] = round(pose["y"] - 0.03, 3)
        w["battery"]["percentage"] = max(0.0, round(w["battery"]["percentage"] - 0.001, 3))
        w["sensors"]["lidar"]["rate_hz"] = 9.9 + (self.seq % 3) * 0.1
        return w


def pushgateway_text(wire: dict[str, Any]) -> bytes:
    """The same series as the aggregator derives from `wire`, as the text an exporter would PUT to a Pushgateway
    (vehicle_id travels in the grouping key; Pushgateway adds push_time_seconds itself)."""
    b, p, q = wire["battery"], wire["position"], wire["pose"]
    gauges = [
        ("vehicle_status", [(f'status="{s}"', float(s == wire["status"])) for s in _STATUSES]),
        ("vehicle_up", [("", 1.0)]),
        ("vehicle_on_roster", [("", 1.0)]),
        ("vehicle_last_heartbeat_timestamp_seconds", [("", wire["sent_at"])]),
        ("vehicle_clock_skew_seconds", [("", 0.0)]),
        ("vehicle_battery_level", [("", b["percentage"])]),
        ("vehicle_battery_voltage_volts", [("", b["voltage"])]),
        ("vehicle_battery_charging", [("", float(b["charging"]))]),
        ("vehicle_gps_fix", [("", float(p["fix"]))]),
        ("vehicle_latitude", [("", p["latitude"])]),
        ("vehicle_longitude", [("", p["longitude"])]),
        ("vehicle_altitude_meters", [("", p["altitude"])]),
        ("vehicle_pose_x_meters", [("", q["x"])]),
        ("vehicle_pose_y_meters", [("", q["y"])]),
        ("vehicle_pose_yaw_radians", [("", q["yaw"])]),
        ("vehicle_speed_meters_per_second", [("", q["speed"])]),
        (
            "vehicle_input_age_seconds",
            [(f'input="{k}"', wire[k]["age_s"]) for k in ("battery", "position", "pose")],
        ),
        (
            "vehicle_sensor_status",
            [
                (f'sensor="{n}",status="{s}"', float(r["status"] == s))
                for n, r in wire["sensors"].items()
                for s in ("ok", "warn", "error", "stale")
            ],
        ),
        ("vehicle_sensor_rate_hertz", [(f'sensor="{n}"', r["rate_hz"]) for n, r in wire["sensors"].items()]),
    ]
    lines: list[str] = []
    for name, samples in gauges:
        lines.append(f"# TYPE {name} gauge\n")
        lines.extend(
            f"{name}{{{labels}}} {value!r}\n" if labels else f"{name} {value!r}\n" for labels, value in samples
        )
    if wire["errors"]:
        lines.append("# TYPE vehicle_errors_total counter\n")
        lines.extend(f'vehicle_errors_total{{error_code="{c}"}} {n}\n' for c, n in wire["errors"].items())
    return "".join(lines).encode()


_STATUSES = (*DEFAULT_VEHICLE_STATUSES, UNKNOWN_STATUS, OFFLINE_STATUS)


@dataclass(frozen=True)
class Target:
    """How to push to one kind of server: request line and body for a vehicle's next push."""

    kind: str  # "aggregator" | "bare" | "pushgateway"
    host: str
    port: int
    tokens: dict[str, str] = field(default_factory=dict)

    def request(self, vehicle: Vehicle) -> bytes:
        wire = vehicle.advance()
        if self.kind == "pushgateway":
            body = pushgateway_text(wire)
            head = (
                f"PUT /metrics/job/telemetry/vehicle_id/{vehicle.id} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: text/plain; version=0.0.4\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            return head.encode() + body
        body = codec.encode_wire(wire)
        auth = f"Authorization: Bearer {self.tokens[vehicle.id]}\r\n" if self.tokens else ""
        head = (
            f"POST /api/v1/telemetry HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/msgpack\r\n"
            f"{ROUTING_HEADER}: {vehicle.id}\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


# -- a minimal HTTP/1.1 client -------------------------------------------------------------------


def _responses(buffer: bytearray) -> Iterator[int]:
    """Statuses of the complete responses at the head of `buffer`, each removed from it as it is read."""
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        head = bytes(buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else None])
        if len(buffer) < end + 4 + length:
            return
        status = int(buffer[9:12])
        del buffer[: end + 4 + length]
        yield status


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; resolves `waiter` with the status."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # asyncio's or uvloop's transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for status in _responses(self.buffer):
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))


def _expire(waiter: asyncio.Future[int]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no response in time"))


@dataclass
class Result:
    """What one load run saw; latencies are seconds from schedule to response, measured window only."""

    vehicles: int
    window_s: float
    ok: int = 0
    failed: int = 0
    ok_in_window: int = 0
    answered_in_window: int = 0
    """Successful responses that arrived inside the window, whenever scheduled: the delivered rate."""
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "vehicles": self.vehicles,
            "window_s": self.window_s,
            "ok": self.ok,
            "failed": self.failed,
            "rate_per_s": self.answered_in_window / self.window_s,
            "on_schedule_per_s": self.ok_in_window / self.window_s,
            "p50_ms": self.percentile(0.50) * 1e3,
            "p99_ms": self.percentile(0.99) * 1e3,
            "max_ms": max(self.latencies, default=math.nan) * 1e3,
            "errors": self.errors,
        }


class _Pusher(asyncio.Protocol):
    """One vehicle on its own keep-alive connection, driven by callbacks (no task, no timer per push, so one core
    of load generator keeps up with ~10,000 pushes/s): sends its due pushes one at a time, records each answer."""

    def __init__(self, run: _Run, vehicle: Vehicle) -> None:
        self.run = run
        self.vehicle = vehicle
        self.transport: Any = None
        self.buffer = bytearray()
        self.backlog: deque[float] = deque()
        self.in_flight: tuple[float, float] | None = None
        """(scheduled, sent) of the push awaiting its answer."""
        self.connecting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.connecting = False
        if self.run.saturate:
            self.due(self.run.clock())
        elif self.backlog:
            self._send()

    def due(self, scheduled: float) -> None:
        self.backlog.append(scheduled)
        if self.transport is None:
            self.run.reconnect(self)
        elif self.in_flight is None:
            self._send()

    def _send(self) -> None:
        scheduled = self.backlog.popleft()
        self.in_flight = (scheduled, self.run.clock())
        self.transport.write(self.run.target.request(self.vehicle))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for status in _responses(self.buffer):
            self._answered(status)

    def _answered(self, status: int) -> None:
        if self.in_flight is None:
            return
        scheduled, sent = self.in_flight
        self.in_flight = None
        self.run.record(status, scheduled, sent)
        if self.run.saturate:
            now = self.run.clock()
            if now < self.run.window_close:
                self.backlog.append(now)
        if self.backlog:
            self._send()

    def expire(self, now: float) -> None:
        if self.in_flight is not None and now - self.in_flight[1] > REQUEST_TIMEOUT_S:
            self.in_flight = None
            self.run.fail("TimeoutError")
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buffer.clear()
        if self.in_flight is not None:
            self.in_flight = None
            self.run.fail("ConnectionError")
        if self.backlog and not self.run.stopping:
            self.run.reconnect(self)


class _Run:
    """The state of one load run: targets, window, results."""

    def __init__(self, target: Target, result: Result, saturate: bool, window: tuple[float, float]) -> None:
        self.target = target
        self.result = result
        self.saturate = saturate
        self.clock = time.perf_counter
        self.window_open, self.window_close = window
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()

    def record(self, status: int, scheduled: float, sent: float) -> None:
        result = self.result
        if not 200 <= status < 300:
            self.fail(f"http_{status}")
            return
        done = self.clock()
        result.ok += 1
        result.answered_in_window += self.window_open <= done < self.window_close
        if self.window_open <= scheduled < self.window_close:
            result.ok_in_window += 1
            # From the schedule when sent late (the server's backlog shows); from the send when the
            # timer fired a little early (event loop timers have millisecond resolution).
            result.latencies.append(done - min(scheduled, sent))

    def fail(self, reason: str) -> None:
        self.result.failed += 1
        self.result.errors[reason] = self.result.errors.get(reason, 0) + 1

    def reconnect(self, pusher: _Pusher) -> None:
        if pusher.connecting or self.stopping:
            return
        pusher.connecting = True
        task = self.loop.create_task(self._connect(pusher))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, pusher: _Pusher) -> None:
        try:
            await self.loop.create_connection(lambda: pusher, self.target.host, self.target.port)
        except OSError as exc:
            pusher.connecting = False
            while pusher.backlog:  # every push waiting for this connection fails with it
                pusher.backlog.popleft()
                self.fail(type(exc).__name__)


async def run(
    target: Target,
    vehicles: int,
    *,
    rate_hz: float = 1.0,
    ramp_s: float | None = None,
    warmup_s: float = 1.0,
    duration_s: float = 10.0,
    saturate: bool = False,
    boot_id: str = "bench-boot",
    on_window: Callable[[bool], None] | None = None,
) -> Result:
    """Drive `vehicles` simulated vehicles; `on_window(True/False)` is called as the measured window opens/closes."""
    if not 0 < vehicles <= MAX_VEHICLES or not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"bounded: 1..{MAX_VEHICLES} vehicles, at most {MAX_DURATION_S:g} s")
    result = Result(vehicles, duration_s)
    if ramp_s is None:
        ramp_s = ramp_seconds(vehicles)
    clock = time.perf_counter
    start = clock() + 0.2
    window_open = start + ramp_s + warmup_s
    window_close = window_open + duration_s
    state = _Run(target, result, saturate, (window_open, window_close))
    pushers = [_Pusher(state, Vehicle(i, boot_id)) for i in range(vehicles)]
    period = 1.0 / rate_hz
    window_marked = False

    async def sweep() -> None:
        while not state.stopping:
            await asyncio.sleep(0.5)
            now = clock()
            for pusher in pushers:
                pusher.expire(now)

    sweeper = asyncio.ensure_future(sweep())
    # Connections ramp up over ramp_s; vehicle i's pushes are due at start + ramp_s + (i / n + k) * period.
    for i, pusher in enumerate(pushers):
        await asyncio.sleep(max(0.0, start + ramp_s * i / vehicles - clock()))
        state.reconnect(pusher)
    first = start + ramp_s
    cycle, index = 0, 0
    while True:
        due = first + (index / vehicles + cycle) * period
        if not window_marked and due >= window_open:
            await asyncio.sleep(max(0.0, window_open - clock()))
            if on_window:
                on_window(True)
            window_marked = True
        if due >= window_close or saturate:
            break
        delay = due - clock()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        pushers[index].due(due)
        index += 1
        if index == vehicles:
            index, cycle = 0, cycle + 1
    if not window_marked:
        await asyncio.sleep(max(0.0, window_open - clock()))
        if on_window:
            on_window(True)
    await asyncio.sleep(max(0.0, window_close - clock()))
    if on_window:
        on_window(False)
    drain_until = clock() + REQUEST_TIMEOUT_S + 1.0
    while clock() < drain_until and any(p.in_flight or p.backlog for p in pushers):
        await asyncio.sleep(0.1)
    state.stopping = True
    sweeper.cancel()
    for pusher in pushers:
        if pusher.in_flight is not None or pusher.backlog:
            state.fail("TimeoutError")
        if pusher.transport is not None:
            pusher.transport.close()
    await asyncio.sleep(0.05)
    return result


async def fill(target: Target, fleet: Sequence[Vehicle], *, connections: int = 100) -> int:
    """Push every vehicle once (closed loop over `connections` connections); returns the failures."""
    loop = asyncio.get_running_loop()
    queue = list(reversed(fleet))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        _, conn = await loop.create_connection(_Connection, target.host, target.port)
        try:
            while queue:
                vehicle = queue.pop()
                waiter: asyncio.Future[int] = loop.create_future()
                conn.waiter = waiter
                timer = loop.call_later(REQUEST_TIMEOUT_S, _expire, waiter)
                conn.transport.write(target.request(vehicle))
                try:
                    status = await waiter
                finally:
                    timer.cancel()
                failures += not 200 <= status < 300
        finally:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(fleet)))))
    return failures


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it roughly halves the client's cost per request), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_sync(coro: Any) -> Any:
    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT (loopback only)")
    parser.add_argument("--target", choices=("aggregator", "bare", "pushgateway"), default="aggregator")
    parser.add_argument("--tokens", help="JSON file {vehicle_id: token} (aggregator with auth)")
    parser.add_argument("--vehicles", type=int, default=500)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds (after ramp and warm-up)")
    parser.add_argument("--rate", type=float, default=1.0, help="pushes per second per vehicle")
    parser.add_argument("--saturate", action="store_true", help="closed loop: push again as soon as answered")
    options = parser.parse_args(argv)
    parts = urlsplit(options.url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback targets only")
    tokens = json.loads(Path(options.tokens).read_text(encoding="utf-8")) if options.tokens else {}
    target = Target(options.target, parts.hostname or "127.0.0.1", parts.port or 80, tokens)
    result = run_sync(
        run(target, options.vehicles, rate_hz=options.rate, duration_s=options.duration, saturate=options.saturate)
    )
    print(json.dumps(result.summary(), indent=2))
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
