"""A reconnect storm against an overloaded server: who gets answered, per vehicle (docs/reliability.md).

N vehicles open their connections over the loadgen's ramp (2,000 in 2 s) and push in a closed loop (each again
as soon as answered, as `loadgen --saturate`), while `--hogs` busy processes share the server's core (a machine
overloaded). Per vehicle: its answers; a push unanswered for loadgen's 10 s request timeout is a timeout (its
connection closed, not reopened, as in the loadgen). Printed per case: vehicles never answered, the lowest index
among them, the most answers one vehicle got, timeouts and resets, the longest the server's listen queue got
(`ss`) and, for the aggregator, its refusal counters.

Cases, in one run: the bare aiohttp server, the aggregator of this checkout and, with `--before DIR`, the
aggregator of another checkout (e.g. `git archive <commit> | tar -x -C DIR`). The aggregator trusts 127.0.0.1
as a proxy (`trusted_proxies`): every vehicle here shares that address, where a fleet's vehicles have their own,
so the per-address pending cap would otherwise refuse most of them (counted; `--no-trust` shows it).

    python -m bench.accept_storm [--vehicles 2000] [--duration 5] [--hogs 2] [--before DIR]

Loopback only; bounded: at most loadgen.MAX_VEHICLES vehicles, 60 s of window, the hogs end with the case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loadgen, servers
from .loadgen import REQUEST_TIMEOUT_S, Target, Vehicle

MAX_WINDOW_S = 60.0
SATURATION_LIMITS = {"rate_limit_per_vehicle_hz": 10_000.0, "rate_limit_burst": 10_000}
"""As `make bench`'s saturation runs: a closed loop pushes each vehicle as fast as it is answered."""


@dataclass
class Outcome:
    """What one vehicle saw."""

    answers: int = 0
    timeouts: int = 0
    resets: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class _Storming(asyncio.Protocol):
    """One vehicle: pushes as soon as connected and again as soon as answered, until the window closes."""

    def __init__(self, target: Target, vehicle: Vehicle, outcome: Outcome, close_at: float) -> None:
        self.target = target
        self.vehicle = vehicle
        self.outcome = outcome
        self.close_at = close_at
        self.transport: asyncio.Transport | None = None
        self.sent: float | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        now = time.perf_counter()
        if self.transport is None or now >= self.close_at:
            self.sent = None
            return
        self.sent = now
        self.transport.write(self.target.request(self.vehicle))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for status in loadgen._responses(self.buffer):
            self.outcome.answers += 1
            self.outcome.statuses[status] = self.outcome.statuses.get(status, 0) + 1
            self._send()

    def expire(self, now: float) -> None:
        if self.sent is not None and now - self.sent > REQUEST_TIMEOUT_S and self.transport is not None:
            self.outcome.timeouts += 1
            self.sent = None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.sent is not None:
            self.outcome.resets += 1
            self.sent = None


async def storm(target: Target, vehicles: int, duration_s: float) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    ramp = loadgen.ramp_seconds(vehicles)
    start = time.perf_counter()
    close_at = start + ramp + duration_s
    outcomes = [Outcome() for _ in range(vehicles)]
    pushers = [_Storming(target, Vehicle(i, "storm"), outcomes[i], close_at) for i in range(vehicles)]

    async def connect(pusher: _Storming) -> None:
        try:
            await loop.create_connection(lambda: pusher, target.host, target.port)
        except OSError:
            pusher.outcome.resets += 1

    connecting = []
    for i, pusher in enumerate(pushers):
        await asyncio.sleep(max(0.0, start + ramp * i / vehicles - time.perf_counter()))
        connecting.append(loop.create_task(connect(pusher)))
    await asyncio.gather(*connecting)
    while any(p.sent is not None for p in pushers):  # each push answered, timed out or reset: bounded by the timeout
        await asyncio.sleep(0.5)
        now = time.perf_counter()
        for pusher in pushers:
            pusher.expire(now)
    for pusher in pushers:
        if pusher.transport is not None:
            pusher.transport.close()
    await asyncio.sleep(0.1)
    return outcomes


@contextmanager
def hogs(count: int, seconds: float) -> Iterator[None]:
    """`count` busy loops on the server's core for at most `seconds`: the machine overloaded."""
    argv = ["timeout", f"{seconds:.0f}", sys.executable, "-c", "while True: pass"]
    procs = [subprocess.Popen(servers.pinned(argv, servers.SERVER_CORE)) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


@contextmanager
def listen_queue(port: int) -> Iterator[list[int]]:
    """The longest the listen queue of `port` got (`ss`'s Recv-Q of a listening socket), sampled every 0.2 s."""
    longest = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            command = ["ss", "-ltnH", f"sport = :{port}"]
            out = subprocess.run(command, check=False, capture_output=True, text=True).stdout
            for line in out.splitlines():
                longest[0] = max(longest[0], int(line.split()[1]))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield longest
    finally:
        done.set()
        thread.join()


def refusals(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    prefix = 'telemetry_connections_refused_total{reason="'
    return {
        line[len(prefix) :].partition('"')[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def run_case(name: str, server: servers.Server, target: Target, options: argparse.Namespace) -> dict[str, Any]:
    vehicles, duration_s = options.vehicles, options.duration
    try:
        cpu0 = server.cpu_seconds()
        bound = loadgen.ramp_seconds(vehicles) + duration_s + REQUEST_TIMEOUT_S + 10
        with hogs(options.hogs, bound), listen_queue(server.port) as longest:
            outcomes = loadgen.run_sync(storm(target, vehicles, duration_s))
        cpu = server.cpu_seconds() - cpu0
        refused = refusals(server.url) if target.kind == "aggregator" else {}
    finally:
        server.stop(grace_s=5.0)
    silent = [i for i, o in enumerate(outcomes) if o.answers == 0]
    statuses: dict[int, int] = {}
    for outcome in outcomes:
        for status, count in outcome.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    row = {
        "case": name,
        "vehicles": vehicles,
        "answers": sum(o.answers for o in outcomes),
        "statuses": statuses,
        "never_answered": len(silent),
        "first_never_answered": silent[0] if silent else None,
        "most_answers_one_vehicle": max(o.answers for o in outcomes),
        "timeouts": sum(o.timeouts for o in outcomes),
        "resets": sum(o.resets for o in outcomes),
        "listen_queue_max": longest[0],
        "server_cpu_s": round(cpu, 2),
        "refused": refused,
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accept_storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of closed loop after the ramp")
    parser.add_argument("--hogs", type=int, default=2, help="busy processes on the server's core")
    parser.add_argument("--before", type=Path, help="another checkout whose aggregator to run as well")
    parser.add_argument("--no-trust", action="store_true", help="do not trust 127.0.0.1 as a proxy")
    options = parser.parse_args(argv)
    if not 0 < options.vehicles <= loadgen.MAX_VEHICLES or not 0 < options.duration <= MAX_WINDOW_S:
        parser.error(f"bounded: 1..{loadgen.MAX_VEHICLES} vehicles, at most {MAX_WINDOW_S:g} s")
    trusted = [] if options.no_trust else ["127.0.0.1/32"]
    sources: list[tuple[str, Path | None]] = [("aggregator", None)]
    if options.before:
        sources.insert(0, ("aggregator-before", options.before.resolve()))
    servers.prioritise()
    with tempfile.TemporaryDirectory(prefix="accept-storm-") as tmp:
        bare = servers.start_bare()
        run_case("bare", bare, Target("bare", bare.host, bare.port), options)
        for name, source in sources:
            server, tokens = servers.start_aggregator(
                Path(tmp), options.vehicles, source=source, limits=SATURATION_LIMITS, trusted_proxies=trusted
            )
            target = Target("aggregator", server.host, server.port, tokens)
            run_case(name, server, target, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
