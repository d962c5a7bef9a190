"""`make soak`: the long load run of docs/reliability.md, 10,000 vehicles at 1 Hz for 10 minutes.

The aggregator (real CLI, per-vehicle tokens, state file on) is pinned to core 0, the load generator to core 1.
Reports failed pushes, latency against the schedule, RSS before and after, CPU per push, and checks that the
aggregator counted every push it acknowledged; writes bench/results/soak-<time>.json and the results table of
docs/reliability.md.

    python -m bench.soak [--vehicles 10000] [--minutes 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import loadgen, servers
from .run import RESULTS, environment, log

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


def soak(vehicles: int, minutes: float, rate_hz: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tvm-soak-") as tmp:
        server, tokens = servers.start_aggregator(Path(tmp), vehicles)
        try:
            rss_before = server.rss_bytes()
            marks: dict[bool, float] = {}

            def on_window(opening: bool) -> None:
                marks[opening] = server.cpu_seconds()

            target = loadgen.Target("aggregator", server.host, server.port, tokens)
            log(f"soak: {vehicles} vehicles at {rate_hz:g} Hz for {minutes:g} min against {server.url}")
            result = loadgen.run_sync(
                loadgen.run(target, vehicles, rate_hz=rate_hz, duration_s=minutes * 60, on_window=on_window)
            )
            rss_after = server.rss_bytes()
            received = _counter(server, "telemetry_snapshots_received_total")
        finally:
            server.stop()
    window = minutes * 60
    cpu = marks[False] - marks[True]
    return {
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
