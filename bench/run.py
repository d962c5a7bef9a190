"""`make bench`: every benchmark of docs/benchmarks.md in one run, each figure beside its baseline.

Servers run pinned to core 0 (taskset), this process (the load generator) to core 1; loopback only;
every run is bounded in vehicles and seconds. Results go to bench/results/<time>.json and docs/benchmarks.md.

    python -m bench.run [--levels 1000,2500,5000,10000] [--window 8] [--skip-ros] [--skip-history] [--skip-balancer]
        [--skip-prometheus-memory]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from . import bench_balancer, decode_cost, handler_variants, loadgen, prometheus_memory, report, servers
from .loadgen import Target, Vehicle

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SATURATION_VEHICLES = 2000
"""Closed-loop vehicles (connections) in saturation mode. The aggregator's per-vehicle rate limit is raised for
these runs only: a closed loop pushes each vehicle as fast as the server answers, and the limit is not what is
measured."""
SCRAPED_WINDOW_S = 32.0
"""The measured window of the scraped run: three whole-fleet scrapes at 15 s intervals fall in it."""
BREAKDOWN_LOAD = (2500, 2.0)
"""(vehicles, Hz) of the CPU-per-push breakdown: 5,000 pushes/s, which every variant holds on one core."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start(kind: str, workdir: Path, vehicles: int, *, saturate: bool = False) -> tuple[servers.Server, Target]:
    if kind.startswith("aggregator"):
        variant = kind.partition(":")[2] or None
        limits = {"limits": {"rate_limit_per_vehicle_hz": 10_000.0, "rate_limit_burst": 10_000}} if saturate else {}
        server, tokens = servers.start_aggregator(workdir, vehicles, variant=variant, **limits)
        return server, Target("aggregator", server.host, server.port, tokens)
    if kind == "bare":
        server = servers.start_bare()
        return server, Target("bare", server.host, server.port)
    server = servers.start_pushgateway(workdir, consistency_check=kind == "pushgateway")
    return server, Target("pushgateway", server.host, server.port)


def start_scraper(
    server: servers.Server, interval_s: float, duration_s: float, first_s: float
) -> subprocess.Popen[str]:
    """bench/scraper.py against `server`, pinned to the load core: a full /metrics every `interval_s`."""
    argv = [sys.executable, "-m", "bench.scraper", server.url, "--interval", str(interval_s)]
    argv += ["--duration", str(duration_s), "--first", str(first_s)]
    return subprocess.Popen(
        servers.pinned(argv, servers.LOAD_CORE), stdout=subprocess.PIPE, text=True, env=servers.bench_env()
    )


def scrapes_of(scraper: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, _ = scraper.communicate(timeout=120)
    if scraper.returncode != 0:
        raise RuntimeError(f"the scraper exited with {scraper.returncode}")
    return list(json.loads(out))


def ingest(
    kind: str,
    workdir: Path,
    vehicles: int,
    window: float,
    *,
    saturate: bool = False,
    rate_hz: float = 1.0,
    scrape_every_s: float | None = None,
) -> dict[str, Any]:
    """One open-loop (or closed-loop) run against a fresh server; CPU and RSS from /proc over the window. With
    `scrape_every_s`, a scraper reads the whole /metrics that often during the window (bench/scraper.py)."""
    server, target = start(kind, workdir, vehicles, saturate=saturate)
    scraper = None
    try:
        rss_before = server.rss_bytes()
        marks: dict[bool, float] = {}

        def on_window(opening: bool) -> None:
            marks[opening] = server.cpu_seconds()

        if scrape_every_s is not None:  # the first scrape 2 s into the window (ramp and warm-up as loadgen's)
            lead = loadgen.ramp_seconds(vehicles) + 1.0 + 2.0
            scraper = start_scraper(server, scrape_every_s, lead + window - 2.0, lead)
        result = loadgen.run_sync(
            loadgen.run(target, vehicles, rate_hz=rate_hz, duration_s=window, saturate=saturate, on_window=on_window)
        )
        rss_after = server.rss_bytes()
        scrapes = scrapes_of(scraper) if scraper is not None else []
    finally:
        if scraper is not None and scraper.poll() is None:
            scraper.kill()
        server.stop(grace_s=5.0)
    cpu = marks[False] - marks[True]
    mode = "saturation" if saturate else f"{rate_hz:g} Hz"
    if scrape_every_s is not None:
        mode += f" + scrape every {scrape_every_s:g} s"
    row = {
        "target": kind,
        "scrapes": scrapes,
        "mode": mode,
        **result.summary(),
        "server_cpu_util": cpu / window,
        "cpu_per_push_us": cpu / result.answered_in_window * 1e6 if result.answered_in_window else math.nan,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
    }
    log(
        f"ingest {kind:20s} n={vehicles:6d} {row['mode']:10s} rate={row['rate_per_s']:8.0f}/s "
        f"p99={row['p99_ms']:8.1f} ms failed={row['failed']} cpu/push={row['cpu_per_push_us']:6.1f} us "
        f"cpu={row['server_cpu_util']:.0%} rss={row['rss_after_mib']:.0f} MiB"
        + (f" scrapes (s): {[round(x.get('seconds', -1), 3) for x in scrapes]}" if scrapes else "")
    )
    return row


def scrape_once(server: servers.Server) -> tuple[float, float, int, int]:
    """GET /metrics: (wall seconds, server CPU seconds, bytes, sample lines)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    try:
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        wall, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    lines = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
    return wall, cpu, len(body), lines


def fill(target: Target, fleet: list[Vehicle]) -> None:
    failures = loadgen.run_sync(loadgen.fill(target, fleet))
    if failures:
        raise RuntimeError(f"{failures} pushes failed while filling {target.kind}")


def scrape(kind: str, workdir: Path, vehicles: int, repeat: int = 3) -> list[dict[str, Any]]:
    """/metrics with `vehicles` vehicles: after every vehicle changed (the 1 Hz case), and unchanged."""
    server, target = start(kind, workdir, vehicles)
    rows = []
    try:
        fleet = [Vehicle(i, "bench-boot") for i in range(vehicles)]
        fill(target, fleet)
        scrape_once(server)
        cases: list[tuple[str, Callable[[], None]]] = [("unchanged", lambda: None)]
        if kind == "aggregator":
            cases.insert(0, ("all changed", lambda: fill(target, fleet)))
        for case, before in cases:
            runs = []
            for _ in range(repeat):
                before()
                runs.append(scrape_once(server))
            wall, cpu, size, lines = (statistics.median(r[i] for r in runs) for i in range(4))
            rows.append(
                {
                    "target": kind,
                    "vehicles": vehicles,
                    "case": case,
                    "wall_ms": wall * 1e3,
                    "cpu_ms": cpu * 1e3,
                    "bytes": int(size),
                    "samples": int(lines),
                    "rss_mib": server.rss_bytes() / 2**20,
                }
            )
            log(
                f"scrape {kind:20s} n={vehicles:6d} {case:12s} {wall * 1e3:8.1f} ms wall {cpu * 1e3:8.1f} ms cpu "
                f"{size / 1e6:6.1f} MB {int(lines)} samples rss={rows[-1]['rss_mib']:.0f} MiB"
            )
    finally:
        server.stop()
    return rows


def environment() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    pushgateway = "not installed"
    if servers.pushgateway_available():
        out = subprocess.run([servers.PUSHGATEWAY, "--version"], capture_output=True, text=True, check=False)
        pushgateway = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "unknown"
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "prometheus_client": version("prometheus-client"),
        "msgpack": version("msgpack"),
        "uvloop": version("uvloop"),
        "pushgateway": pushgateway,
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1000,2500,5000,10000", help="vehicle counts for the 1 Hz runs")
    parser.add_argument("--window", type=float, default=8.0, help="measured seconds per ingest run")
    parser.add_argument("--skip-ros", action="store_true", help="skip the bridge, freshness and /rosout benchmarks")
    parser.add_argument("--skip-history", action="store_true", help="skip the history backfill benchmarks")
    parser.add_argument("--skip-balancer", action="store_true", help="skip the HAProxy benchmark")
    parser.add_argument("--skip-prometheus-memory", action="store_true", help="skip Prometheus memory per series")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    options = parser.parse_args(argv)
    levels = [int(x) for x in options.levels.split(",")]
    os.sched_setaffinity(0, {servers.LOAD_CORE})
    niceness = servers.prioritise()
    results: dict[str, Any] = {"environment": environment(), "levels": levels, "window_s": options.window}
    results["environment"]["nice"] = niceness
    with tempfile.TemporaryDirectory(prefix="tvm-bench-") as tmp:
        workdir = Path(tmp)
        kinds = ["bare", "aggregator"]
        if servers.pushgateway_available():
            kinds.append("pushgateway-nocheck")
        else:
            log("prometheus-pushgateway not installed: its columns stay empty (apt-get install prometheus-pushgateway)")
        rows = [ingest(kind, workdir, n, options.window) for n in levels for kind in kinds]
        # While a scraper reads the whole /metrics every 15 s, as Prometheus does: the largest fleet, the largest the
        # bare handler held (the load the aggregator must then hold too, scrapes and all), and the largest the
        # aggregator held unscraped (what the scrapes cost it where it has the least room).
        scraped_levels = {max(levels), *report.held_levels(rows)[-1:], *report.held_levels(rows, "aggregator")[-1:]}
        for vehicles in sorted(scraped_levels):
            rows.append(ingest("aggregator", workdir, vehicles, SCRAPED_WINDOW_S, scrape_every_s=15.0))
        # The same 10,000 pushes/s over a quarter of the connections: what the connection count costs.
        rows += [ingest(kind, workdir, 2500, options.window, rate_hz=4.0) for kind in ("bare", "aggregator")]
        if servers.pushgateway_available():
            rows.append(ingest("pushgateway", workdir, min(levels), min(options.window, 5.0)))
        rows += [ingest(kind, workdir, SATURATION_VEHICLES, 5.0, saturate=True) for kind in kinds]
        results["ingest"] = rows
        vehicles, rate = BREAKDOWN_LOAD
        results["decode"] = decode_cost.measure()
        results["breakdown"] = [
            ingest(kind, workdir, vehicles, options.window, rate_hz=rate)
            for kind in ("bare", *(f"aggregator:{v}" for v in handler_variants.VARIANTS))
        ]
        scrape_kinds = [k for k in kinds if k != "bare"]
        results["scrape"] = [row for n in levels for kind in scrape_kinds for row in scrape(kind, workdir, n)]
        if not options.skip_balancer and bench_balancer.available():
            results["balancer"] = bench_balancer.run_all(workdir, log)
        elif not options.skip_balancer:
            log("haproxy not installed: the balancer benchmark is skipped (apt-get install haproxy)")
        if not options.skip_prometheus_memory and prometheus_memory.binary():
            results["prometheus_memory"] = prometheus_memory.run_all(workdir, log)
        elif not options.skip_prometheus_memory:
            log("prometheus not installed: its memory per series is not measured (apt-get install prometheus)")
        if not options.skip_ros:
            from . import ros_bench

            results.update(ros_bench.run_all(workdir, log))
        if not options.skip_history:
            from . import history_bench

            results.update(history_bench.run_all(workdir, log))
    results["environment"]["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    report.write(results, options.output, REPO / "README.md")
    log(f"wrote {options.output} and bench/results/bench-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
