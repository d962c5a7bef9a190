"""What HAProxy costs per push, and pushes/s through it with 1 and 2 shards (docs/scaling.md).

Closed loop (every vehicle pushes again as soon as answered) for `--duration` seconds, three cases on fresh
processes: `direct` (the vehicles push to one aggregator, no balancer), `haproxy-1` (through the shipped
config/haproxy/haproxy.cfg, every vehicle mapped to one shard) and `haproxy-2` (the map over two shards, one
aggregator each). Reported per case: pushes/s, latency, and the CPU per push of HAProxy and of the aggregators
(from /proc). The balancer's frontend is plain HTTP here: TLS termination, a handshake per connection and then
symmetric encryption on a keep-alive connection, is not included.

    .venv/bin/python -m bench.bench_balancer [--vehicles 2000] [--duration 10]

Not part of `make bench` yet: run it on a quiet machine (the figures of a shared one are noise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tvm_observability.aggregator import shards

from . import loadgen, servers

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "haproxy" / "haproxy.cfg"
SHIPPED_SERVERS = {"s1a": 9101, "s1b": 9102, "s2a": 9103, "s2b": 9104}
SHIPPED_FRONTENDS = {"fleet_a": 9443, "fleet_b": 9444}
UNLIMITED = {"limits": {"rate_limit_per_vehicle_hz": 10_000.0, "rate_limit_burst": 10_000}}
"""Closed loop pushes far above the 1 Hz a vehicle may: the per-vehicle rate limit would answer 429."""


def haproxy_config(workdir: Path, map_file: Path, aggregators: dict[str, int]) -> tuple[Path, int]:
    """The shipped config with plain-HTTP frontends on free ports, replica a of each shard on `aggregators`
    (s1, s2; the same one twice for one shard) and the b replicas on ports nothing listens on (unused)."""
    text = SHIPPED.read_text(encoding="utf-8")
    text = re.sub(r" ssl crt \S+ alpn http/1\.1", "", text)
    text = text.replace("    log /dev/log local0\n", "")
    text = text.replace("/etc/tvm-observability/vehicle-shards.map", str(map_file))
    ports = {"s1a": aggregators["s1"], "s2a": aggregators.get("s2", aggregators["s1"])}
    ports |= {"s1b": servers.free_port(), "s2b": servers.free_port()}
    frontends = {name: servers.free_port() for name in SHIPPED_FRONTENDS}
    for name, shipped in {**SHIPPED_SERVERS, **SHIPPED_FRONTENDS}.items():
        text = text.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{(ports | frontends)[name]}")
    path = workdir / "haproxy.cfg"
    path.write_text(text, encoding="utf-8")
    return path, frontends["fleet_a"]


def _wait_listening(server: servers.Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((server.host, server.port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not listening after {timeout:g} s")


def run_case(case: str, workdir: Path, vehicles: int, duration: float) -> dict[str, Any]:
    shard_names = ["s1", "s2"] if case == "haproxy-2" else ["s1"]
    ids = [loadgen.vehicle_id(i) for i in range(vehicles)]
    map_file = workdir / "vehicle-shards.map"
    map_file.write_text(shards.render(shards.assign(ids, shard_names)), encoding="utf-8")
    started: list[servers.Server] = []
    try:
        tokens: dict[str, str] = {}
        ports: dict[str, int] = {}
        for shard in shard_names:
            directory = workdir / shard
            directory.mkdir(exist_ok=True)
            sharding = {} if case == "direct" else {"shard": {"name": shard, "map_file": str(map_file)}}
            server, tokens = servers.start_aggregator(directory, vehicles, **UNLIMITED, **sharding)
            started.append(server)
            ports[shard] = server.port
        port = ports["s1"]
        if case != "direct":
            config, port = haproxy_config(workdir, map_file, ports)
            binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
            proc = subprocess.Popen(
                servers.pinned([binary, "-db", "-f", str(config)], servers.SERVER_CORE),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            balancer = servers.Server("haproxy", proc, port=port)
            started.append(balancer)
            _wait_listening(balancer)
        marks: dict[bool, list[float]] = {}

        def on_window(opening: bool) -> None:
            marks[opening] = [server.cpu_seconds() for server in started]

        target = loadgen.Target("aggregator", "127.0.0.1", port, tokens)
        result = loadgen.run_sync(
            loadgen.run(target, vehicles, duration_s=duration, saturate=True, on_window=on_window)
        )
    finally:
        for server in started:
            server.stop(grace_s=5.0)
    cpu = {
        s.name + (f"-{i}" if s.name == "aggregator" else ""): b - a
        for i, (s, a, b) in enumerate(zip(started, marks[True], marks[False], strict=True))
    }
    pushes = result.answered_in_window or math.nan
    return {
        "case": case,
        **result.summary(),
        "cpu_per_push_us": {name: seconds / pushes * 1e6 for name, seconds in cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_balancer", description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=10.0)
    options = parser.parse_args(argv)
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        print("bench_balancer: haproxy not found (apt-get install haproxy)", file=sys.stderr)
        return 2
    rows = []
    for case in ("direct", "haproxy-1", "haproxy-2"):
        with tempfile.TemporaryDirectory(prefix=f"bench-{case}-") as workdir:
            rows.append(run_case(case, Path(workdir), options.vehicles, options.duration))
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
