"""Bridge and freshness benchmarks: real ROS 2 processes in a private, localhost-only ROS domain.

Bridge: the publisher (bench/ros_nodes.py) sends the standard topic load; first the floor (a bare node with the
same raw subscriptions), then `vehicle_bridge` with the shipped config/vehicle_bridge.yaml pushing to a real
aggregator, each measured for WINDOW_S from /proc after WARMUP_S. Freshness, during the bridge window: the time from
each battery publish (a new percentage every second) until /metrics shows it, /metrics polled every POLL_S.
/rosout cost (issue 14): right after, the same bridge process measured again for WINDOW_S while a chatty robot
(`ros_nodes chatter`: hundreds of INFO lines per second and a few ERRORs through /rosout) runs beside the topic load
(the middleware filters /rosout for it: a DDS content filter); then a bridge that filters /rosout itself
(`events_rosout_filter: false`, what an rmw without content filters leaves) under the same load; then, under the
same /rosout load, a bare node subscribed to /rosout alone, and the same with a DDS content filter (what a /rosout
subscription costs at least, and what filtering in the middleware leaves).

The helpers (`process`, `usage`, `bridge_argv`, `write_token`) are shared with bench/history_bench.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tvm_observability.demo.processes import stop_process

from . import servers

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "test"))
from support import ros_domain as ros_domain  # noqa: E402, PLC0414 - test/support.py owns the ROS domain locks; re-exported

WARMUP_S = 6.0
WINDOW_S = 30.0
POLL_S = 0.02
VEHICLE = "veh-00000"


def _start(argv: list[str], env: dict[str, str], core: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        servers.pinned(argv, core),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )


@contextmanager
def process(argv: list[str], env: dict[str, str], core: int) -> Iterator[subprocess.Popen[str]]:
    proc = _start(argv, env, core)
    try:
        yield proc
    finally:
        stop_process(proc, signal.SIGINT, 15)


def usage(proc: subprocess.Popen[str], seconds: float, during: Callable[[], None] | None = None) -> dict[str, float]:
    """CPU share of one core and RSS of `proc` over `seconds` (after the caller's warm-up)."""
    server = servers.Server("ros", proc)  # type: ignore[arg-type]  # only its /proc readers are used
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    if during is None:
        time.sleep(seconds)
    else:
        during()
    elapsed = time.perf_counter() - t0
    if proc.poll() is not None:
        raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} during the measurement")
    return {"cpu_util": (server.cpu_seconds() - cpu0) / elapsed, "rss_mib": server.rss_bytes() / 2**20}


def nodes_argv(mode: str) -> list[str]:
    """One of bench/ros_nodes.py's processes (publisher, floor, chatter)."""
    return [sys.executable, "-m", "bench.ros_nodes", mode]


def write_token(workdir: Path, token: str) -> Path:
    path = workdir / "vehicle.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path


def bridge_argv(aggregator_url: str, token_file: Path, journal_dir: Path, **params: object) -> list[str]:
    """`vehicle_bridge` with the shipped config/vehicle_bridge.yaml (as deployed: journal, /rosout capture), its
    journal (and /rosout marks) in `journal_dir` rather than below the ROS home, and `params` on top."""
    argv = [
        sys.executable,
        "-m",
        "tvm_observability.bridge.node",
        "--ros-args",
        "--params-file",
        str(REPO / "config" / "vehicle_bridge.yaml"),
    ]
    values = {
        "vehicle_id": VEHICLE,
        "aggregator_url": aggregator_url,
        "token_file": token_file,
        "journal_dir": journal_dir,
        **params,
    }
    for name, value in values.items():
        argv += ["-p", f"{name}:={value}"]
    return argv


def recent_events(url: str, vehicle_id: str) -> int:
    """Events the aggregator shows for the vehicle in /api/v1/vehicles (its last few): proof that /rosout ERRORs
    went all the way through."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/api/v1/vehicles")
        body = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return sum(len(v.get("events", [])) for v in body.get("vehicles", []) if v.get("vehicle_id") == vehicle_id)


class _Freshness:
    """Battery publish times from the publisher's stdout, matched with the first scrape showing each value."""

    def __init__(self, publisher: subprocess.Popen[str], url: str) -> None:
        self.published: dict[int, float] = {}
        self.delays: list[float] = []
        self.url = url
        threading.Thread(target=self._read, args=(publisher,), daemon=True).start()

    def _read(self, publisher: subprocess.Popen[str]) -> None:
        assert publisher.stdout is not None
        for line in publisher.stdout:
            event = json.loads(line)
            self.published[int(event["percent"])] = float(event["t"])

    def poll(self, seconds: float) -> None:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        pattern = re.compile(rb'^vehicle_battery_level\{vehicle_id="' + VEHICLE.encode() + rb'"\} (\S+)$', re.M)
        last: int | None = None
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                conn.request("GET", "/metrics")
                body = conn.getresponse().read()
                seen = time.time()
                match = pattern.search(body)
                if match:
                    value = round(float(match.group(1)))
                    if value != last and last is not None and value in self.published:
                        self.delays.append(seen - self.published[value])
                    last = value
                time.sleep(POLL_S)
        finally:
            conn.close()


def run_all(workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return {"ros_skipped": "rclpy is not installed (pip install -r requirements-ros-kilted.txt)"}
    with ros_domain() as domain:
        env = {**os.environ, **domain, "PYTHONPATH": str(REPO)}
        aggregator, tokens = servers.start_aggregator(workdir, 1)
        token_file = write_token(workdir, tokens[VEHICLE])
        try:
            with process(nodes_argv("publisher"), env, servers.SERVER_CORE) as publisher:
                with process(nodes_argv("floor"), env, servers.LOAD_CORE) as floor:
                    time.sleep(WARMUP_S)
                    source = servers.Server("publisher", publisher)  # type: ignore[arg-type]
                    cpu0 = source.cpu_seconds()
                    floor_usage = usage(floor, WINDOW_S)
                    publisher_usage = {
                        "cpu_util": (source.cpu_seconds() - cpu0) / WINDOW_S,
                        "rss_mib": source.rss_bytes() / 2**20,
                    }
                log(
                    f"bridge floor (bare raw node): {floor_usage['cpu_util']:.1%} cpu, {floor_usage['rss_mib']:.0f} MiB"
                )
                freshness = _Freshness(publisher, aggregator.url)
                argv = bridge_argv(aggregator.url, token_file, workdir / "journal")
                with ExitStack() as chatty:
                    with process(argv, env, servers.LOAD_CORE) as bridge:
                        time.sleep(WARMUP_S)
                        bridge_usage = usage(bridge, WINDOW_S, lambda: freshness.poll(WINDOW_S))
                        log(
                            f"bridge vehicle_bridge: {bridge_usage['cpu_util']:.1%} cpu, "
                            f"{bridge_usage['rss_mib']:.0f} MiB; freshness {len(freshness.delays)} samples"
                        )
                        chatty.enter_context(process(nodes_argv("chatter"), env, servers.SERVER_CORE))
                        time.sleep(WARMUP_S)
                        rosout_usage = usage(bridge, WINDOW_S)
                        events_seen = recent_events(aggregator.url, VEHICLE)
                    log(f"bridge with the /rosout load: {rosout_usage['cpu_util']:.1%} cpu; {events_seen} events")
                    # The path of an rmw without content filters, under the same load: a bridge
                    # that receives every entry and drops those below ERROR by their level byte.
                    argv = bridge_argv(
                        aggregator.url, token_file, workdir / "journal-unfiltered", events_rosout_filter="false"
                    )
                    with process(argv, env, servers.LOAD_CORE) as bridge:
                        time.sleep(WARMUP_S)
                        unfiltered_usage = usage(bridge, WINDOW_S)
                    log(f"bridge filtering /rosout itself: {unfiltered_usage['cpu_util']:.1%} cpu")
                    subscribers = {}
                    for mode in ("rosout", "rosout-filtered"):
                        with process(nodes_argv(mode), env, servers.LOAD_CORE) as subscriber:
                            time.sleep(WARMUP_S)
                            subscribers[mode] = usage(subscriber, WINDOW_S)
                        log(f"bare {mode} subscriber: {subscribers[mode]['cpu_util']:.1%} cpu")
        finally:
            aggregator.stop()
    from .ros_nodes import LOAD, ROSOUT_LOAD

    delays = sorted(freshness.delays)
    result: dict[str, Any] = {
        "bridge": {"load": LOAD, "floor": floor_usage, "bridge": bridge_usage, "publisher": publisher_usage},
        "rosout": {
            "load": ROSOUT_LOAD,
            "bridge": rosout_usage,
            "bridge_unfiltered": unfiltered_usage,
            "events_seen": events_seen,
            "subscriber": subscribers["rosout"],
            "filtered_subscriber": subscribers["rosout-filtered"],
        },
    }
    if delays:
        result["freshness"] = {
            "samples": len(delays),
            "period_s": 1.0,
            "poll_s": POLL_S,
            "p50_s": statistics.median(delays),
            "p99_s": delays[min(len(delays) - 1, int(0.99 * len(delays)))],
            "max_s": delays[-1],
        }
    return result


def main() -> int:
    """`python -m bench.ros_bench`: the bridge, freshness and /rosout benchmarks alone, their markdown on stdout."""
    from . import report

    results = servers.run_alone("ros", run_all)
    print(json.dumps(results, indent=2), file=sys.stderr)
    rows = report.targets(results)
    print("\n".join(f"- {name}: {measured} (baseline: {base})" for name, measured, base, _ in rows))
    if "bridge" in results:
        print("\n".join(report.rosout_lines(results["bridge"], results.get("rosout"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
