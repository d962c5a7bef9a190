"""`make soak`: the long load run of docs/reliability.md, 10,000 vehicles at 1 Hz for 10 minutes.

The aggregator (real CLI, per-vehicle tokens, state file on) is pinned to core 0, the load generator to core 1.
A scraper reads the whole /metrics every 15 s, as Prometheus would. Reports failed pushes, latency against the
schedule, CPU per push, RSS sampled every 30 s with its slope over the second half of the run (memory must level
off once the fleet's state is built: a leak of a few bytes per push shows as a slope), and checks that the
aggregator counted every push it acknowledged; writes bench/results/soak-<time>.json and the results table of
docs/reliability.md.

    python -m bench.soak [--vehicles 10000] [--minutes 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import loadgen, servers
from .run import RESULTS, environment, log, scrapes_of, start_scraper

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin (written by `make soak`) -->", "<!-- soak:end -->"


def _counter(server: servers.Server, name: str) -> float:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


SAMPLE_EVERY_S = 30.0
"""RSS and CPU of the aggregator are sampled this often through the run, not only at its ends."""
SCRAPE_EVERY_S = 15.0


class Sampler:
    """(seconds since start, RSS bytes, CPU seconds) of a server every `period_s`, from a thread, until stopped."""

    def __init__(self, server: servers.Server, period_s: float) -> None:
        self.server = server
        self.period_s = period_s
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._start, self.server.rss_bytes(), self.server.cpu_seconds()))
            if self._stop.wait(self.period_s):
                return


def rss_slope(samples: list[tuple[float, int, float]]) -> float:
    """Least-squares slope of RSS over the second half of the run, in bytes per second (a leak of a few bytes per
    push shows as a steady slope once the fleet's state is built; NaN with fewer than 3 samples in that half)."""
    if not samples:
        return math.nan
    half = samples[-1][0] / 2
    late = [(t, rss) for t, rss, _ in samples if t >= half]
    if len(late) < 3:
        return math.nan
    return statistics.linear_regression([t for t, _ in late], [float(rss) for _, rss in late]).slope


def soak(vehicles: int, minutes: float, rate_hz: float) -> dict[str, Any]:
    window = minutes * 60
    with tempfile.TemporaryDirectory(prefix="tvm-soak-") as tmp:
        server, tokens = servers.start_aggregator(Path(tmp), vehicles)
        scraper = None
        try:
            rss_before = server.rss_bytes()
            marks: dict[bool, float] = {}

            def on_window(opening: bool) -> None:
                marks[opening] = server.cpu_seconds()

            target = loadgen.Target("aggregator", server.host, server.port, tokens)
            log(f"soak: {vehicles} vehicles at {rate_hz:g} Hz for {minutes:g} min against {server.url}")
            lead = loadgen.ramp_seconds(vehicles) + 1.0
            scraper = start_scraper(server, SCRAPE_EVERY_S, lead + window, lead + SCRAPE_EVERY_S)
            with Sampler(server, SAMPLE_EVERY_S) as sampler:
                result = loadgen.run_sync(
                    loadgen.run(target, vehicles, rate_hz=rate_hz, duration_s=window, on_window=on_window)
                )
            rss_after = server.rss_bytes()
            scrapes = scrapes_of(scraper)
            received = _counter(server, "telemetry_snapshots_received_total")
        finally:
            if scraper is not None and scraper.poll() is None:
                scraper.kill()
            server.stop()
    cpu = marks[False] - marks[True]
    slope = rss_slope(sampler.samples)
    pushes_per_s = result.answered_in_window / window
    scrape_s = [x["seconds"] for x in scrapes if x.get("status") == 200]
    return {
        "samples": sampler.samples,
        "rss_slope_bytes_per_s": slope,
        "rss_slope_bytes_per_push": slope / pushes_per_s if pushes_per_s else math.nan,
        "scrapes": len(scrape_s),
        "scrapes_failed": len(scrapes) - len(scrape_s),
        "scrape_max_s": max(scrape_s, default=math.nan),
        "vehicles": vehicles,
        "rate_hz": rate_hz,
        "minutes": minutes,
        **result.summary(),
        "received_counter": received,
        "cpu_per_push_us": cpu / max(1, result.answered_in_window) * 1e6,
        "server_cpu_util": cpu / window,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
    }


def table(r: dict[str, Any]) -> str:
    env = r["environment"]
    rows = [
        BEGIN,
        f"Run of {env['date_utc']} on {env['cores']}-core {env['cpu']} (Python {env['python']}, aiohttp "
        f"{env['aiohttp']}, uvloop {env['uvloop']}); load average at start "
        f"{env['loadavg_start'][0]:.2f}, at end {env['loadavg_end'][0]:.2f}"
        + (" (other work ran beside it)." if max(env["loadavg_start"][0], env["loadavg_end"][0]) > 1.5 else "."),
        "",
        "| | |",
        "| --- | --- |",
        f"| vehicles × duration | {r['vehicles']:,} at {r['rate_hz']:g} Hz each × {r['minutes']:g} min |",
        f"| pushes acknowledged | {r['ok']:,} (aggregator's received counter: {r['received_counter']:,.0f}) |",
        f"| failed pushes | {r['failed']:,} {r['errors'] or ''} |",
        f"| delivered rate | {r['rate_per_s']:,.0f} pushes/s |",
        f"| latency from schedule | p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms |",
        f"| server CPU | {r['server_cpu_util']:.0%} of one core, {r['cpu_per_push_us']:.0f} µs per push |",
        f"| RSS before → after | {r['rss_before_mib']:.0f} MiB → {r['rss_after_mib']:.0f} MiB |",
        f"| RSS every {SAMPLE_EVERY_S:g} s (MiB) | {', '.join(f'{rss / 2**20:.0f}' for _, rss, _ in r['samples'])} |",
        f"| RSS slope over the second half | {r['rss_slope_bytes_per_s'] * 60 / 1024:+,.1f} KiB/min "
        f"({r['rss_slope_bytes_per_push']:+.3f} bytes per push) |",
        f"| whole-fleet scrapes every {SCRAPE_EVERY_S:g} s during the run | {r['scrapes']} answered "
        f"(longest {r['scrape_max_s']:.2f} s), {r['scrapes_failed']} failed |",
        END,
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1.0, help="pushes per second per vehicle")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/reliability.md")
    options = parser.parse_args(argv)
    os.sched_setaffinity(0, {servers.LOAD_CORE})
    servers.prioritise()
    env = environment()
    result = {"environment": env, **soak(options.vehicles, options.minutes, options.rate)}
    env["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"soak-{stamp}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(table(result))
    if not options.no_doc and DOC.exists():
        text = DOC.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        DOC.write_text(pattern.sub(lambda _: table(result), text), encoding="utf-8")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
