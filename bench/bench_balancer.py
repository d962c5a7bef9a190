"""What HAProxy costs per push beside a direct push, and pushes/s through it with 1 and 2 shards (docs/scaling.md).

Two measurements, each case on fresh processes, through the shipped config/haproxy/haproxy.cfg (its frontend
made plain HTTP, a stats socket added, the ports replaced):

- **Cost**, open loop at a fixed rate (`--vehicles` at `--rate` Hz, one keep-alive connection each): `direct` (the
  vehicles push to one aggregator) and `haproxy-1` (the same pushes through the balancer to that one shard).
  The aggregator is pinned to core 0, HAProxy to core 1 beside the load generator, so the aggregator's core is
  its own in both cases and the latency difference is the balancer's hop. Reported: CPU per push of HAProxy and
  of the aggregator (utime+stime from /proc over the window), latency p50/p99 from each push's schedule.
- **Saturation**, closed loop (`--saturation-vehicles` connections, each pushing again as soon as answered):
  `direct`, `haproxy-1` and `haproxy-2` (the map over two shards, one aggregator each). HAProxy and the load
  generator stay on core 1, the aggregators may use both cores: with two shards they share what the load
  generator and HAProxy leave of the 2 cores. The closed loop is a queue as deep as its connections; it stays
  far below the depth at which waiting would exceed the bridge's 2 s request timeout.

HAProxy runs one thread per core it is given (the shipped config sets no `nbthread`): one here.

Every failure is explained by HAProxy's own counters (`show stat` on its stats socket, read after each run):
health-check ejections, queue timeouts, server errors. The balancer's frontend is plain HTTP here: TLS
termination (a handshake per connection, then symmetric encryption on a keep-alive connection) comes on top.

    .venv/bin/python -m bench.bench_balancer [--vehicles 1000] [--rate 1] [--duration 8]

Part of `make bench` (bench/run.py, `--skip-balancer`); runnable alone. Loopback only, bounded in vehicles and time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tvm_observability.aggregator import shards

from . import loadgen, servers

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "haproxy" / "haproxy.cfg"
SHIPPED_SERVERS = {"s1a": 9101, "s1b": 9102, "s2a": 9103, "s2b": 9104}
SHIPPED_FRONTENDS = {"fleet_a": 9443, "fleet_b": 9444}
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BENCH_CONFIG: dict[str, Any] = {
    "limits": {
        "rate_limit_per_vehicle_hz": 10_000.0,
        "rate_limit_burst": 10_000,
        "max_pending_connections": loadgen.MAX_VEHICLES,
    },
    "trusted_proxies": ["127.0.0.1"],
}
"""The aggregators' settings for this benchmark, beyond servers.start_aggregator's:
- the closed loop pushes far above the 1 Hz a vehicle may: the per-vehicle rate limit would answer 429;
- the load generator opens every connection during its ramp and sends the first push only when it is due (up to
  a second later; a bridge sends at once): past `max_pending_connections` (1,000) the aggregator would cut the
  oldest of these not-yet-used connections;
- HAProxy and the load generator both connect from 127.0.0.1: listed in `trusted_proxies` as a deployment lists
  its balancer (docs/scaling.md), so per-address pending limits do not apply to them."""
COST_LOAD = (1000, 1.0)
"""(vehicles, Hz) of the cost comparison: 1,000 pushes/s, which one aggregator core holds with room to spare even
on a busy shared machine (2,000/s did not hold there: the aggregator, starved of its core, fell seconds behind and
HAProxy's queue timed pushes out, 503)."""
SATURATION_VEHICLES = 200
"""Closed-loop connections: enough to keep two aggregators busy. More only deepens the queue (waiting = depth /
throughput): 2,000 made HAProxy's health checks wait 2 s behind the pushes, eject the shard (503) and time out
pushes waiting over `timeout server` (504), which no 1 Hz fleet with a 2 s client timeout produces."""
STAT_FIELDS = {
    "hrsp_2xx": "2xx",
    "hrsp_5xx": "5xx",
    "chkdown": "check_downs",
    "qmax": "queue_max",
    "smax": "concurrent_max",
    "econ": "connect_errors",
    "eresp": "response_errors",
    "wretr": "retries",
}
"""HAProxy `show stat` columns kept per used server: what explains a failed push."""


def haproxy_config(workdir: Path, map_file: Path, aggregators: dict[str, int]) -> tuple[Path, int]:
    """The shipped config with a plain-HTTP frontend on a free port, a stats socket, replica a of each shard on
    `aggregators` (s1, s2; the same one twice for one shard) and the b replicas on ports nothing listens on."""
    text = SHIPPED.read_text(encoding="utf-8")
    text = re.sub(r" ssl crt \S+ alpn http/1\.1", "", text)
    text = text.replace("    log /dev/log local0\n", f"    stats socket {workdir / 'haproxy.sock'} level user\n")
    text = text.replace("/etc/tvm-observability/vehicle-shards.map", str(map_file))
    ports = {"s1a": aggregators["s1"], "s2a": aggregators.get("s2", aggregators["s1"])}
    ports |= {"s1b": servers.free_port(), "s2b": servers.free_port()}
    frontends = {name: servers.free_port() for name in SHIPPED_FRONTENDS}
    for name, shipped in {**SHIPPED_SERVERS, **SHIPPED_FRONTENDS}.items():
        text = text.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{(ports | frontends)[name]}")
    path = workdir / "haproxy.cfg"
    path.write_text(text, encoding="utf-8")
    return path, frontends["fleet_a"]


def haproxy_stats(sock: Path) -> dict[str, dict[str, int]]:
    """`show stat` of the backends and servers that carried traffic: {backend/server: {field: value}}; a backend's
    own row (`<backend>/BACKEND`) holds the requests queued for it (a push waits there for a free server slot)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(sock))
        conn.sendall(b"show stat\n")
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    rows = csv.DictReader(raw.decode().removeprefix("# ").splitlines())
    return {
        f"{row['pxname']}/{row['svname']}": {name: int(row[field] or 0) for field, name in STAT_FIELDS.items()}
        for row in rows
        if row.get("svname") not in (None, "FRONTEND") and int(row.get("stot") or 0) > 0
    }


def _wait_listening(server: servers.Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((server.host, server.port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not listening after {timeout:g} s")


def _wait_checked(sock: Path, backends: list[str], timeout: float = 30.0) -> None:
    """Until HAProxy's first health checks found the used servers UP (it starts them UP and checks at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with socket.socket(socket.AF_UNIX) as conn:
                conn.connect(str(sock))
                conn.sendall(b"show stat\n")
                raw = conn.makefile("rb").read().decode()
            status = {f"{r['pxname']}": r["status"] for r in csv.DictReader(raw.removeprefix("# ").splitlines())}
            if all(status.get(b) == "UP" for b in backends):
                return
        time.sleep(0.1)
    raise RuntimeError(f"HAProxy backends {backends} not UP after {timeout:g} s")


def run_case(
    case: str, workdir: Path, vehicles: int, duration: float, *, rate_hz: float = 1.0, saturate: bool = False
) -> dict[str, Any]:
    """One case on fresh processes; the row: loadgen summary, CPU per push and utilisation per process."""
    shard_names = ["s1", "s2"] if case == "haproxy-2" else ["s1"]
    ids = [loadgen.vehicle_id(i) for i in range(vehicles)]
    map_file = workdir / "vehicle-shards.map"
    map_file.write_text(shards.render(shards.assign(ids, shard_names)), encoding="utf-8")
    started: list[servers.Server] = []
    stats: dict[str, dict[str, int]] = {}
    try:
        tokens: dict[str, str] = {}
        ports: dict[str, int] = {}
        for shard in shard_names:
            directory = workdir / shard
            directory.mkdir(exist_ok=True)
            sharding = {} if case == "direct" else {"shard": {"name": shard, "map_file": str(map_file)}}
            server, tokens = servers.start_aggregator(directory, vehicles, **BENCH_CONFIG, **sharding)
            server.name = f"aggregator-{shard}"
            if saturate:  # started pinned to core 0 (servers.py): every thread of it may use both cores
                for thread in Path(f"/proc/{server.proc.pid}/task").iterdir():
                    os.sched_setaffinity(int(thread.name), range(os.cpu_count() or 1))
            started.append(server)
            ports[shard] = server.port
        port = ports["s1"]
        sock = workdir / "haproxy.sock"
        if case != "direct":
            config, port = haproxy_config(workdir, map_file, ports)
            proc = subprocess.Popen(
                servers.pinned([HAPROXY, "-db", "-f", str(config)], servers.LOAD_CORE),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            balancer = servers.Server("haproxy", proc, port=port)
            started.append(balancer)
            _wait_listening(balancer)
            _wait_checked(sock, [f"{shard}_a" for shard in shard_names])
        marks: dict[bool, list[float]] = {}

        def on_window(opening: bool) -> None:
            marks[opening] = [server.cpu_seconds() for server in started]

        target = loadgen.Target("aggregator", "127.0.0.1", port, tokens)
        result = loadgen.run_sync(
            loadgen.run(target, vehicles, rate_hz=rate_hz, duration_s=duration, saturate=saturate, on_window=on_window)
        )
        if case != "direct":
            stats = haproxy_stats(sock)
    finally:
        for server in started:
            server.stop(grace_s=5.0)
    cpu = {s.name: b - a for s, a, b in zip(started, marks[True], marks[False], strict=True)}
    pushes = result.answered_in_window or math.nan
    return {
        "case": case,
        "mode": "saturation" if saturate else f"{rate_hz:g} Hz",
        **result.summary(),
        "cpu_per_push_us": {name: seconds / pushes * 1e6 for name, seconds in cpu.items()},
        "cpu_util": {name: seconds / duration for name, seconds in cpu.items()},
        "haproxy": stats,
    }


def available() -> bool:
    return Path(HAPROXY).exists()


def run_all(
    workdir: Path,
    log: Callable[[str], None],
    *,
    cost_load: tuple[int, float] = COST_LOAD,
    saturation_vehicles: int = SATURATION_VEHICLES,
    duration: float = 8.0,
) -> dict[str, Any]:
    """Both measurements: {"cost": [direct, haproxy-1], "saturation": [direct, haproxy-1, haproxy-2]}."""
    vehicles, rate = cost_load
    runs = [(case, False) for case in ("direct", "haproxy-1")]
    runs += [(case, True) for case in ("direct", "haproxy-1", "haproxy-2")]
    results: dict[str, Any] = {"cost": [], "saturation": []}
    for case, saturate in runs:
        directory = workdir / f"balancer-{case}-{'saturation' if saturate else 'cost'}"
        directory.mkdir(parents=True)
        n = saturation_vehicles if saturate else vehicles
        row = run_case(case, directory, n, duration, rate_hz=rate, saturate=saturate)
        results["saturation" if saturate else "cost"].append(row)
        cpu = " ".join(f"{name}={us:.1f}" for name, us in row["cpu_per_push_us"].items())
        log(
            f"balancer {case:10s} n={n:5d} {row['mode']:10s} rate={row['rate_per_s']:7.0f}/s "
            f"p50={row['p50_ms']:6.2f} ms p99={row['p99_ms']:7.2f} ms failed={row['failed']} cpu/push us: {cpu}"
        )
        for server, counters in row["haproxy"].items():
            log(f"balancer {case:10s}   haproxy {server}: {counters}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_balancer", description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=COST_LOAD[0], help="vehicles of the open-loop cost runs")
    parser.add_argument("--rate", type=float, default=COST_LOAD[1], help="pushes per vehicle and second (cost runs)")
    parser.add_argument("--saturation-vehicles", type=int, default=SATURATION_VEHICLES)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    options = parser.parse_args(argv)
    if not available():
        print("bench_balancer: haproxy not found (apt-get install haproxy)", file=sys.stderr)
        return 2
    results = servers.run_alone(
        "balancer",
        run_all,
        cost_load=(options.vehicles, options.rate),
        saturation_vehicles=options.saturation_vehicles,
        duration=options.duration,
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
