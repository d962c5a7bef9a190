"""History backfill benchmarks (issue 13): real processes, loopback, bounded, each figure beside a baseline of its run.

drain: a real aggregator (pinned to core 0) with `history:` writing to a real Prometheus 2.42 remote-write receiver
  (Debian package, the shipped prometheus.yml with its out-of-order window; pinned to core 1). Baseline: the live
  push's server CPU per snapshot (bench/loadgen.py, LIVE_VEHICLES at 1 Hz). Then the bridge's own journal
  (bridge/journal.py) is filled with OUTAGE_ROWS snapshots of a 1 h outage at 1 Hz and the bridge's own uploader
  (bridge/backlog.py) drains it, once at the highest budget its parameter allows (the drain rate the aggregator
  and Prometheus sustain, and the aggregator's CPU per backfilled snapshot), once at the shipped default budget
  for a shorter outage (PACED_ROWS): the time from reconnect to a complete history, measured; for a 1 h outage
  computed from the uploader's pacing and the measured time per batch, and checked against the measured one.
outage: a real vehicle_bridge (pinned to core 1) under the bridge benchmark's topic load (bench/ros_nodes.py) with
  its journal on, OUTAGE_S with the link up (a real aggregator), then OUTAGE_S with the aggregator unreachable (a
  closed port): its CPU share, its bytes written to storage (/proc/<pid>/io write_bytes), the journal's file
  growth and the snapshots journalled, per hour.

    python -m bench.history_bench        # both, markdown on stdout (docs/benchmarks.md's section)
"""

from __future__ import annotations

import http.client
import json
import math
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tvm_observability import codec
from tvm_observability.bridge.backlog import BacklogUploader
from tvm_observability.bridge.journal import JOURNAL_FILE, Journal
from tvm_observability.bridge.params import default_values, parse_params
from tvm_observability.demo import prometheus_setup

from . import loadgen, ros_bench, servers

PROMETHEUS = "/usr/bin/prometheus"
LIVE_VEHICLES = 500
"""The live baseline: this many vehicles pushing at 1 Hz (about the unpaced drain's rate, which one core holds)."""
LIVE_WINDOW_S = 8.0
IDLE_S = 15.0
"""The aggregator's and Prometheus's idle CPU (timers, the scrape every 15 s) is measured this long and taken out of
every run's CPU per snapshot: at the default budget's 20 snapshots/s it would otherwise dominate."""
OUTAGE_ROWS = 3600
"""A 1 h outage at the 1 s push period."""
PACED_ROWS = 1800
"""The outage drained for real at the default budget: 30 min at 1 Hz (90 s of upload at 20 snapshots/s)."""
MAX_BUDGET = 10_000.0
"""The highest `backlog_max_snapshots_per_s` the bridge accepts (bridge/params.py): the drain is then unpaced."""
DRAIN_LIMIT_S = 600.0
"""Give up a drain after this long (a generous bound, not a measurement)."""
OUTAGE_S = 60.0
"""Each of the outage benchmark's two windows (link up, link down)."""
JOURNAL_FLUSH_ROWS = 5
"""Rows per journal flush while filling it: the bridge flushes every journal_flush_interval_s (5 s) at 1 Hz."""


# -- drain --------------------------------------------------------------------------------------------------


def _start_prometheus(workdir: Path, target: str) -> servers.Server:
    """The Debian Prometheus with the shipped config (its out-of-order window), scraping `target`, and its
    remote-write receiver on; its own TSDB in `workdir`."""
    port = servers.free_port()
    config = prometheus_setup.write_setup(workdir / "prometheus", target=target)
    argv = prometheus_setup.command(
        PROMETHEUS, config, workdir / "tsdb", f"127.0.0.1:{port}", remote_write_receiver=True
    )
    server = servers._spawn("prometheus", servers.pinned(argv, servers.LOAD_CORE))
    server.port = port
    servers._wait(server, lambda: servers._get(server.url, "/-/ready") == 200)
    return server


def _query(prometheus: servers.Server, expr: str) -> float:
    """An instant query's single value (0 for an empty result)."""
    conn = http.client.HTTPConnection(prometheus.host, prometheus.port, timeout=30)
    try:
        conn.request("GET", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        body = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _fill_journal(directory: Path, vehicle: int, rows: int, end: float) -> Journal:
    """`rows` snapshots of vehicle `vehicle`, one a second up to `end`, written by the bridge's journal code."""
    journal = Journal(directory, max_bytes=int(default_values()["journal_max_bytes"]), max_age_s=86400.0)
    robot = loadgen.Vehicle(vehicle, f"outage-boot-{vehicle}")
    for k in range(rows):
        wire = robot.advance()
        wire["sent_at"] = end - rows + k
        journal.add(wire["boot_id"], wire["seq"], wire["sent_at"], codec.encode_wire(wire))
        if (k + 1) % JOURNAL_FLUSH_ROWS == 0:
            journal.flush()
    journal.flush()
    return journal


def _drain(
    journal: Journal, url: str, token: str, vehicle: int, *, budget: float, cpu: Callable[[], float]
) -> dict[str, float]:
    """The bridge's uploader drains `journal` (started as when the link returns); wall time, batches, CPU."""
    rows = journal.stats().entries
    params = parse_params(
        {**default_values(), "vehicle_id": loadgen.vehicle_id(vehicle), "aggregator_url": url, "journal_dir": "bench"}
    )
    client = params.backlog_client(token)  # the bridge's own: the history URL, its timeouts and backoff
    assert client is not None
    uploader = BacklogUploader(
        journal,
        client,
        max_snapshots_per_s=budget,
        batch_size=int(default_values()["backlog_batch_size"]),
        idle_poll_s=0.05,
    )
    cpu0, t0 = cpu(), time.perf_counter()
    uploader.start()
    try:
        while journal.stats().entries and time.perf_counter() - t0 < DRAIN_LIMIT_S:
            time.sleep(0.02)
        wall, used = time.perf_counter() - t0, cpu() - cpu0
        status = uploader.status()
    finally:
        uploader.close()
        journal.close()
    if journal.stats().entries:
        raise RuntimeError(f"backlog not drained in {DRAIN_LIMIT_S:g} s: {status}")
    return {
        "rows": rows,
        "wall_s": wall,
        "batches": status.batches,
        "failures": status.failures,
        "aggregator_cpu_s": used,
    }


def drain(workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    if not Path(PROMETHEUS).exists():
        return {"skipped": f"{PROMETHEUS} not installed (apt-get install prometheus)"}
    defaults = default_values()
    unpaced, paced = LIVE_VEHICLES, LIVE_VEHICLES + 1  # the two outage vehicles, after the live ones
    port = servers.free_port()
    instance = f"127.0.0.1:{port}"
    prometheus = _start_prometheus(workdir, instance)
    try:
        history = {
            "remote_write_url": f"{prometheus.url}/api/v1/write",
            "job": prometheus_setup.AGGREGATOR_JOB,
            "instance": instance,
        }
        aggregator, tokens = servers.start_aggregator(workdir, LIVE_VEHICLES + 2, listen=instance, history=history)
        try:
            marks: dict[bool, float] = {}

            def on_window(opening: bool) -> None:
                marks[opening] = aggregator.cpu_seconds()

            target = loadgen.Target("aggregator", aggregator.host, aggregator.port, tokens)
            live = loadgen.run_sync(
                loadgen.run(target, LIVE_VEHICLES, rate_hz=1.0, duration_s=LIVE_WINDOW_S, on_window=on_window)
            )
            cpu0, prom0 = aggregator.cpu_seconds(), prometheus.cpu_seconds()
            time.sleep(IDLE_S)
            idle = (aggregator.cpu_seconds() - cpu0) / IDLE_S
            prom_idle = (prometheus.cpu_seconds() - prom0) / IDLE_S
            live_cpu = marks[False] - marks[True] - idle * LIVE_WINDOW_S
            live_row = {
                "vehicles": LIVE_VEHICLES,
                "rate_per_s": live.answered_in_window / LIVE_WINDOW_S,
                "failed": live.failed,
                "cpu_per_snapshot_us": live_cpu / live.answered_in_window * 1e6,
                "idle_cpu_util": idle,
                "prometheus_idle_cpu_util": prom_idle,
            }
            log(f"history live baseline: {live_row['cpu_per_snapshot_us']:.1f} us cpu/snapshot; idle {idle:.1%}")
            now = time.time()
            rows = {}
            for name, vehicle, count, budget in (
                ("unpaced", unpaced, OUTAGE_ROWS, MAX_BUDGET),
                ("paced", paced, PACED_ROWS, float(defaults["backlog_max_snapshots_per_s"])),
            ):
                journal = _fill_journal(workdir / f"journal-{name}", vehicle, count, now)
                prom_cpu0 = prometheus.cpu_seconds()
                token = tokens[loadgen.vehicle_id(vehicle)]
                row = _drain(journal, aggregator.url, token, vehicle, budget=budget, cpu=aggregator.cpu_seconds)
                row["prometheus_cpu_s"] = prometheus.cpu_seconds() - prom_cpu0 - prom_idle * row["wall_s"]
                row["aggregator_cpu_s"] -= idle * row["wall_s"]
                row["budget_per_s"] = budget
                selector = f'vehicle_battery_level{{vehicle_id="{loadgen.vehicle_id(vehicle)}"}}'
                row["samples_in_prometheus"] = _query(prometheus, f"count_over_time({selector}[2h])")
                rows[name] = row
                log(
                    f"history drain {name}: {count} snapshots in {row['wall_s']:.1f} s, "
                    f"{row['aggregator_cpu_s'] / count * 1e6:.0f} us aggregator cpu each, "
                    f"{row['samples_in_prometheus']:.0f} battery samples in Prometheus"
                )
        finally:
            aggregator.stop()
    finally:
        prometheus.stop()
    return {
        "live": live_row,
        **rows,
        "batch_size": int(defaults["backlog_batch_size"]),
        "default_budget_per_s": float(defaults["backlog_max_snapshots_per_s"]),
        "outage_rows": OUTAGE_ROWS,
    }


def _paused_s(rows: int, batch_size: int, budget: float) -> float:
    """The uploader's pauses while it drains `rows` (bridge/backlog.py): after each acknowledged batch, its size ÷
    the budget; the pause after the last batch comes when the journal is already empty."""
    last = rows - (math.ceil(rows / batch_size) - 1) * batch_size
    return (rows - last) / budget


def complete_after_s(rows: int, batch_size: int, budget: float, batch_s: float) -> float:
    """Time to drain a backlog of `rows`: its batches' round trips (`batch_s` each) plus the pauses between them."""
    return math.ceil(rows / batch_size) * batch_s + _paused_s(rows, batch_size, budget)


def batch_seconds(row: dict[str, float], batch_size: int) -> float:
    """One batch's round trip in a measured drain (its pauses taken out)."""
    paused = _paused_s(int(row["rows"]), batch_size, row["budget_per_s"])
    return max(0.0, row["wall_s"] - paused) / max(1.0, row["batches"])


# -- outage -------------------------------------------------------------------------------------------------


def _write_bytes(pid: int) -> tuple[int, int]:
    """(write_bytes, wchar) of /proc/<pid>/io: bytes sent to storage, bytes passed to write calls."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["write_bytes"]), int(fields["wchar"])


def _journal_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob(f"{JOURNAL_FILE}*") if p.is_file())


def _journalled(directory: Path) -> tuple[int, float]:
    """Rows in a (closed) journal and the span of their wall times."""
    with sqlite3.connect(directory / JOURNAL_FILE) as db:
        count, first, last = db.execute("SELECT count(*), min(wall_time), max(wall_time) FROM snapshots").fetchone()
    return int(count), float(last - first) if count else 0.0


def outage(workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return {"skipped": "rclpy is not installed (pip install -r requirements-ros-kilted.txt)"}
    result: dict[str, Any] = {
        "window_s": OUTAGE_S,
        "flush_interval_s": float(default_values()["journal_flush_interval_s"]),
    }
    with ros_bench.ros_domain() as domain:
        env = {**os.environ, **domain, "PYTHONPATH": str(ros_bench.REPO)}
        aggregator, tokens = servers.start_aggregator(workdir, 1)
        token_file = ros_bench.write_token(workdir, tokens[ros_bench.VEHICLE])
        closed = f"http://127.0.0.1:{servers.free_port()}"  # bound once, closed: connection refused
        try:
            with ros_bench.process(ros_bench.nodes_argv("publisher"), env, servers.SERVER_CORE) as publisher:
                assert publisher.stdout is not None
                threading.Thread(target=publisher.stdout.read, daemon=True).start()  # its battery lines
                for case, url in (("link_up", aggregator.url), ("outage", closed)):
                    journal_dir = workdir / f"journal-{case}"
                    argv = ros_bench.bridge_argv(url, token_file, journal_dir)
                    own = journal_dir / ros_bench.VEHICLE
                    with ros_bench.process(argv, env, servers.LOAD_CORE) as bridge:
                        time.sleep(ros_bench.WARMUP_S)
                        io0, size0 = _write_bytes(bridge.pid), _journal_size(own)
                        row = ros_bench.usage(bridge, OUTAGE_S)
                        io1, size1 = _write_bytes(bridge.pid), _journal_size(own)
                    per_hour = 3600.0 / OUTAGE_S
                    row["write_bytes_per_h"] = (io1[0] - io0[0]) * per_hour
                    row["wchar_per_h"] = (io1[1] - io0[1]) * per_hour
                    row["journal_growth_per_h"] = (size1 - size0) * per_hour
                    rows, span = _journalled(own) if (own / JOURNAL_FILE).exists() else (0, 0.0)
                    row["journalled"] = rows
                    row["snapshots_per_h"] = (rows - 1) / span * 3600.0 if rows > 1 and span else 0.0
                    row["journal_bytes_at_end"] = _journal_size(own)
                    result[case] = row
                    log(
                        f"history outage {case}: {row['cpu_util']:.1%} cpu, "
                        f"{row['write_bytes_per_h'] / 1e6:.1f} MB/h written, {rows} journalled"
                    )
        finally:
            aggregator.stop()
    return result


def run_all(workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    return {"history": {"drain": drain(workdir, log), "outage": outage(workdir, log)}}


def main() -> int:
    from . import report

    results = servers.run_alone("history", run_all)
    print(json.dumps(results, indent=2), file=sys.stderr)
    print("\n".join(report.history_section(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
