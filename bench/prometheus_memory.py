"""Prometheus memory per active series, measured (docs/scaling.md): the Debian `prometheus` with the shipped
config and rules scrapes a real aggregator holding N vehicles; after a few scrapes its own
`process_resident_memory_bytes`, `go_memstats_heap_inuse_bytes` and `prometheus_tsdb_head_series` are read.

The figure that plans a larger fleet is the **marginal** one, between two levels: (memory at the larger level -
memory at the smaller) / (head series at the larger - at the smaller), which leaves Prometheus's fixed cost out.
The vehicles push over plain HTTP once per scrape interval (their values change between scrapes, as at 1 Hz).
The head holds only a few scrapes' samples here: each series' labels, index entries and first chunk, which is
what a series costs while the head is young; over a 2-hour head block a series' chunks grow by about 1-2 bytes
per sample (a 15 s scrape interval: under 1 KiB more).

    .venv/bin/python -m bench.prometheus_memory [--levels 1000,3000] [--scrapes 6] [--interval 5]

Part of `make bench` (bench/run.py, `--skip-prometheus-memory`); runnable alone. Loopback only, data in a
temporary directory, bounded in vehicles and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tvm_observability.demo import prometheus_setup

from . import loadgen, servers

LEVELS = (1000, 3000)
SCRAPE_INTERVAL_S = 5.0
SCRAPES = 6
READINGS = ("process_resident_memory_bytes", "go_memstats_heap_inuse_bytes", "prometheus_tsdb_head_series")


def binary() -> str | None:
    return shutil.which("prometheus")


def _own_metrics(address: str) -> dict[str, float]:
    """The READINGS from Prometheus's own /metrics."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in READINGS:
            values[name] = float(value)
    return values


def _start_prometheus(workdir: Path, target: str, interval: float) -> tuple[subprocess.Popen[str], str]:
    config = prometheus_setup.write_setup(
        workdir / "config", target=target, scrape_interval=f"{interval:g}s", evaluation_interval=f"{interval:g}s"
    )
    command = prometheus_setup.command(binary() or "prometheus", config, workdir / "data")
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    found: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # read to the end, so Prometheus never blocks on a full pipe
            address = prometheus_setup.listening_address(line)
            if address and not found:
                found.append(address)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 60
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("prometheus did not start")
        time.sleep(0.1)
    return proc, found[0]


def measure(workdir: Path, vehicles: int, scrapes: int, interval: float) -> dict[str, Any]:
    """One level: a fresh aggregator with `vehicles` pushing each interval, a fresh Prometheus scraping it."""
    workdir.mkdir(parents=True)
    server, tokens = servers.start_aggregator(workdir, vehicles, state_file=False)
    prometheus: subprocess.Popen[str] | None = None
    try:
        target = loadgen.Target("aggregator", server.host, server.port, tokens)
        fleet = [loadgen.Vehicle(i, "bench-boot") for i in range(vehicles)]
        failures = loadgen.run_sync(loadgen.fill(target, fleet, connections=50))
        prometheus, address = _start_prometheus(workdir / "prometheus", f"{server.host}:{server.port}", interval)
        readings: list[dict[str, float]] = []
        for scrape in range(scrapes + 3):
            time.sleep(max(0.0, interval - 0.5))
            failures += loadgen.run_sync(loadgen.fill(target, fleet, connections=50))
            if scrape >= scrapes:  # the last three intervals: the median of three readings
                readings.append(_own_metrics(address))
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        server.stop(grace_s=5.0)
    row: dict[str, Any] = {"vehicles": vehicles, "scrapes": scrapes, "interval_s": interval, "push_failures": failures}
    row |= {name: statistics.median(r[name] for r in readings) for name in READINGS}
    row["rss_per_series_bytes"] = row["process_resident_memory_bytes"] / row["prometheus_tsdb_head_series"]
    return row


def run_all(
    workdir: Path,
    log: Callable[[str], None],
    *,
    levels: tuple[int, ...] = LEVELS,
    scrapes: int = SCRAPES,
    interval: float = SCRAPE_INTERVAL_S,
) -> dict[str, Any]:
    """Every level, then the marginal memory per series between the smallest and the largest."""
    rows = []
    for vehicles in levels:
        row = measure(workdir / f"prometheus-memory-{vehicles}", vehicles, scrapes, interval)
        rows.append(row)
        log(
            f"prometheus memory n={vehicles:6d}: {row['prometheus_tsdb_head_series']:,.0f} head series, "
            f"RSS {row['process_resident_memory_bytes'] / 2**20:.0f} MiB, heap in use "
            f"{row['go_memstats_heap_inuse_bytes'] / 2**20:.0f} MiB, push failures {row['push_failures']}"
        )
    low, high = rows[0], rows[-1]
    series = high["prometheus_tsdb_head_series"] - low["prometheus_tsdb_head_series"]
    marginal = {
        f"{name}_per_series": (high[name] - low[name]) / series if series else float("nan") for name in READINGS[:2]
    }
    log(
        f"prometheus memory: {marginal['process_resident_memory_bytes_per_series']:.0f} B RSS and "
        f"{marginal['go_memstats_heap_inuse_bytes_per_series']:.0f} B heap per added series"
    )
    return {"levels": rows, "marginal": marginal, "version": _version()}


def _version() -> str:
    out = subprocess.run([binary() or "prometheus", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.prometheus_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="vehicle counts, smallest first")
    parser.add_argument("--scrapes", type=int, default=SCRAPES, help="scrapes before the readings")
    parser.add_argument("--interval", type=float, default=SCRAPE_INTERVAL_S, help="scrape interval, seconds")
    options = parser.parse_args(argv)
    levels = tuple(sorted(int(x) for x in options.levels.split(",")))
    if not 0 < levels[-1] <= loadgen.MAX_VEHICLES or not 0 < options.scrapes * options.interval <= 300:
        parser.error(f"bounded: at most {loadgen.MAX_VEHICLES} vehicles and 300 s of scrapes per level")
    if binary() is None:
        print("prometheus_memory: prometheus not found (apt-get install prometheus)", file=sys.stderr)
        return 2
    results = servers.run_alone(
        "prometheus-memory", run_all, levels=levels, scrapes=options.scrapes, interval=options.interval
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
