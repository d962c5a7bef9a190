"""`make demo`: a telemetry_aggregator plus a simulated fleet of real ROS 2 processes, shown live.

Each vehicle is a vehicle_simulator process and a vehicle_bridge process in the vehicle's own
namespace and its own ROS domain (localhost discovery only), pushing to one aggregator on
127.0.0.1 with per-vehicle credentials generated into a private temporary directory (tokens in
0600 files, the aggregator config holds only their hashes). One vehicle has injected faults.
Geofences: an operating area around the fleet and a keep-out zone inside it; with three vehicles or more the
last one drives out of the area after LEAVE_AFTER_S (VehicleOutsideOperatingArea, the status page's map).
With two vehicles or more, one of the others (outage_index) pushes through a link proxy that the demo cuts for
--outage-s seconds after --outage-after-s; its bridge journals what the aggregator did not acknowledge and uploads
it when the link is back. With a Prometheus (when installed) the aggregator writes that backlog into the scraped
series at the vehicle's own times (history: docs/history.md), and the demo says how much of the outage got filled.
A compact fleet table, read from /metrics, is printed every couple of seconds.
Ctrl-C (or --duration, but not before an outage under way was reported) stops bridges, simulators and the
aggregator in that order.

Usage: python -m tvm_observability.demo [--vehicles N] [--duration S] [--outage-after-s S] [--outage-s S]
       (make demo VEHICLES=N DURATION=S)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..auth import generate_token, hash_token
from ..sim.dynamics import local_to_geo
from . import processes, prometheus_setup
from .link_proxy import LinkProxy

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "vehicle_bridge.yaml"
OFFLINE_AFTER_S = 5.0
REFRESH_S = 2.0
# Demo domains sit above the range the test suite allocates (1..101), below Fast DDS's 232 limit.
_DOMAINS = range(120, 233)
_DOMAIN_LOCKS = Path(tempfile.gettempdir()) / "tvm_observability_demo_domains"
_FAULTY: dict[str, object] = {
    "fault_after_s": 10.0,
    "fault_stop_sensor": "lidar",
    "fault_error_sensor": "camera",
    "fault_error_code": "CAM_USB_RESET",
    "fault_error_period_s": 16.0,
}

LEAVE_AFTER_S = 20.0
_LEAVES: dict[str, object] = {"fault_after_s": LEAVE_AFTER_S, "fault_leave_area_m": 250.0}
"""The vehicle that drives east out of the demo's operating area (about 80 m to the boundary at 1.2 m/s)."""
SITE_MARGIN_M = 120.0
"""The operating area: every vehicle's origin plus this, so its 40 m circle stays well inside."""

OUTAGE_AFTER_S = 15.0
"""Seconds after the demo's start when the outage vehicle's link is cut (once it is online)."""
OUTAGE_S = 30.0
"""How long its link stays cut."""
DRAIN_QUIET_S = 8.0
"""After the link is back, the backlog counts as drained once the aggregator received backlog snapshots and then
none for this long (the bridge notices the link within backoff_max_s, 5 s, and uploads 20 snapshots/s)."""
DRAIN_LIMIT_S = 60.0
"""The history report comes at the latest this long after the link is back, drained or not."""


def origin(index: int) -> tuple[float, float]:
    """(latitude, longitude) of a demo vehicle's route centre."""
    return 52.5200 + 0.002 * index, 13.4050 + 0.003 * index


def leaving_index(count: int) -> int | None:
    """The vehicle that leaves its area: the last one of three or more (not the faulty one), else none."""
    return count - 1 if count >= 3 else None


def demo_zones(count: int) -> dict[str, Any]:
    """The demo's zones file: an operating area around every vehicle's route, a keep-out zone ("pond") inside
    it that no route crosses."""
    corners = [
        local_to_geo(*origin(i), east, north)
        for i in range(count)
        for east in (-SITE_MARGIN_M, SITE_MARGIN_M)
        for north in (-SITE_MARGIN_M, SITE_MARGIN_M)
    ]
    site = _box(*(f(c[k] for c in corners) for f, k in ((min, 1), (min, 0), (max, 1), (max, 0))))
    south, west = local_to_geo(*origin(0), 100.0, 100.0)
    north, east = local_to_geo(*origin(0), 140.0, 130.0)
    pond = _box(west, south, east, north)
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"name": "demo-site", "kind": "operating_area"}, "geometry": site},
            {"type": "Feature", "properties": {"name": "demo-pond", "kind": "keep_out"}, "geometry": pond},
        ],
    }


def _box(west: float, south: float, east: float, north: float) -> dict[str, Any]:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[Any]
    log: IO[bytes] | None
    """The log file the child writes to; None where a reader thread copies its output (the aggregator)."""


@dataclass
class Demo:
    workdir: Path
    vehicles: list[str]
    children: list[Child] = field(default_factory=list)
    locks: list[IO[str]] = field(default_factory=list)
    url: str = ""
    prometheus_url: str = ""
    aggregator: processes.AggregatorProcess | None = None
    config: dict[str, Any] = field(default_factory=dict)
    """The aggregator's configuration as written to aggregator.yaml."""
    link: LinkProxy | None = None
    """The outage vehicle's link to the aggregator."""
    notes: list[str] = field(default_factory=list)
    """What happened to the outage vehicle, oldest first (shown under the table)."""

    @property
    def address(self) -> str:
        """The aggregator's host:port: the scrape target, so the `instance` label of its series."""
        return self.url.removeprefix("http://")


def _die_with_parent() -> None:
    """Child processes get SIGTERM if the demo itself dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(demo: Demo, name: str, args: list[str], env: dict[str, str]) -> Child:
    log = open(demo.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops children in order
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets the parent-death signal
    )
    child = Child(name, proc, log)
    demo.children.append(child)
    return child


def _lock_domain(demo: Demo) -> int:
    _DOMAIN_LOCKS.mkdir(exist_ok=True)
    for domain in _DOMAINS:
        handle = open(_DOMAIN_LOCKS / f"{domain}.lock", "w")  # noqa: SIM115 - held until the demo ends
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        demo.locks.append(handle)
        return domain
    raise RuntimeError("no free ROS domain for the demo")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def start_aggregator(demo: Demo) -> None:
    tokens = {vid: generate_token() for vid in demo.vehicles}
    for vid, token in tokens.items():
        _write_private(demo.workdir / f"{vid}.token", token + "\n")
    zones = demo.workdir / "zones.geojson"
    zones.write_text(json.dumps(demo_zones(len(demo.vehicles)), indent=1), encoding="utf-8")
    demo.config = {
        "listen": "127.0.0.1:0",
        "offline_after_s": OFFLINE_AFTER_S,
        "environment": "demo",
        "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()},
        "geofences": {"file": str(zones)},
    }
    _write_config(demo)
    aggregator = processes.AggregatorProcess(
        processes.aggregator_command(_config_path(demo)),
        keep=200,
        log_file=demo.workdir / "aggregator.log",
        start_new_session=True,  # as _spawn: Ctrl-C reaches the demo only
        preexec_fn=_die_with_parent,
    )
    demo.aggregator = aggregator
    try:
        demo.url = aggregator.start(30)
    finally:
        if aggregator.proc is not None:
            demo.children.append(Child("aggregator", aggregator.proc, None))


def _config_path(demo: Demo) -> Path:
    return demo.workdir / "aggregator.yaml"


def _write_config(demo: Demo) -> None:
    """(Re)write aggregator.yaml from demo.config, private from its first byte, replaced in one step."""
    path = _config_path(demo)
    fresh = path.with_suffix(".new")
    _write_private(fresh, yaml.safe_dump(demo.config))
    os.replace(fresh, path)


def enable_history(demo: Demo) -> None:
    """Point the aggregator's backfill at the demo's Prometheus, with the labels its scrape gives the series. A
    reload (SIGHUP): the aggregator's port, which the scrape needs, and Prometheus's are both known only now."""
    aggregator = demo.aggregator
    assert aggregator is not None and aggregator.proc is not None
    demo.config["history"] = {
        "remote_write_url": demo.prometheus_url + prometheus_setup.REMOTE_WRITE_PATH,
        "job": prometheus_setup.AGGREGATOR_JOB,
        "instance": demo.address,
    }
    _write_config(demo)
    aggregator.proc.send_signal(signal.SIGHUP)
    reloaded = aggregator.wait_until(
        lambda: aggregator.find_log("configuration reloaded") or aggregator.find_log("config reload refused"), 30
    )
    if reloaded is None or reloaded["message"] != "configuration reloaded":
        raise RuntimeError(f"the aggregator did not take the history section; see {demo.workdir / 'aggregator.log'}")


def start_prometheus(demo: Demo) -> str | None:
    """Prometheus with the shipped config and rules scraping the demo's aggregator; its URL, or None
    when the `prometheus` binary is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    workdir = demo.workdir / "prometheus"
    config = prometheus_setup.write_setup(workdir / "config", target=demo.address)
    args = prometheus_setup.command(binary, config, workdir / "data", remote_write_receiver=True)
    child = _spawn(demo, "prometheus", args, dict(os.environ))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and child.proc.poll() is None:
        log = (demo.workdir / "prometheus.log").read_text(errors="replace")
        address = next(filter(None, map(prometheus_setup.listening_address, log.splitlines())), None)
        if address:
            demo.prometheus_url = f"http://{address}"
            return demo.prometheus_url
        time.sleep(0.1)
    raise RuntimeError(f"prometheus did not start; see {demo.workdir / 'prometheus.log'}")


def faulty_index(count: int) -> int:
    """The vehicle with injected faults: V2, or V1 in a one-vehicle fleet."""
    return min(1, count - 1)


def outage_index(count: int) -> int | None:
    """The vehicle whose link is cut: with two vehicles or more, the first that neither has faults nor leaves its
    area; none in a one-vehicle fleet."""
    if count < 2:
        return None
    busy = {faulty_index(count), leaving_index(count)}
    return next(i for i in range(count) if i not in busy)


def start_vehicle(demo: Demo, index: int, vid: str) -> None:
    domain = _lock_domain(demo)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    namespace = vid.lower()
    lat, lon = origin(index)
    sim_params: dict[str, object] = {
        "initial_battery": round(0.95 - 0.17 * (index % 5), 2),
        "origin_lat": lat,
        "origin_lon": lon,
    }
    if index == faulty_index(len(demo.vehicles)):
        sim_params.update(_FAULTY)
    if index == leaving_index(len(demo.vehicles)):
        sim_params.update(_LEAVES)
    sim_args = [sys.executable, "-m", "tvm_observability.sim.simulator", "--ros-args", "-r", f"__ns:=/{namespace}"]
    for key, value in sim_params.items():
        sim_args += ["-p", f"{key}:={value}"]
    _spawn(demo, f"{vid}-simulator", sim_args, env)
    bridge_args = [sys.executable, "-m", "tvm_observability.bridge.node", "--ros-args", "-r", f"__ns:=/{namespace}"]
    if REPO_CONFIG.exists():
        bridge_args += ["--params-file", str(REPO_CONFIG)]
    url = demo.url
    if index == outage_index(len(demo.vehicles)):
        host, _, port = demo.address.rpartition(":")
        demo.link = LinkProxy((host, int(port)))
        url = demo.link.url
    bridge_args += [
        "-p", f"vehicle_id:={vid}",
        "-p", f"aggregator_url:={url}",
        "-p", f"token_file:={demo.workdir / f'{vid}.token'}",
        "-p", f"journal_dir:={demo.workdir / 'journal'}",  # the demo's own, not the ROS home's
    ]  # fmt: skip
    _spawn(demo, f"{vid}-bridge", bridge_args, env)


def parse_exposition(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample of a Prometheus text exposition (prometheus_client's parser)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def fleet_rows(text: str) -> list[list[str]]:
    """One table row per vehicle from /metrics text."""
    info: dict[str, dict[str, Any]] = defaultdict(lambda: {"sensors": {}, "errors": {}})
    for name, labels, value in parse_exposition(text):
        vid = labels.get("vehicle_id")
        if vid is None:
            continue
        v = info[vid]
        if name == "vehicle_status" and value == 1.0:
            v["status"] = labels["status"]
        elif name == "vehicle_battery_level":
            v["battery"] = f"{value:5.1f}%"
        elif name == "vehicle_battery_charging" and value == 1.0:
            v["charging"] = True
        elif name == "vehicle_last_heartbeat_seconds_ago":
            v["age"] = "never" if value == float("inf") else f"{value:4.1f}s"
        elif name == "vehicle_sensor_status" and value == 1.0:
            v["sensors"][labels["sensor"]] = labels["status"]
        elif name == "vehicle_errors_total":
            v["errors"][labels["error_code"]] = int(value)
    rows = []
    for vid in sorted(info):
        v = info[vid]
        bad = [f"{s}:{st}" for s, st in sorted(v["sensors"].items()) if st != "ok"]
        ok = sum(1 for st in v["sensors"].values() if st == "ok")
        sensors = f"{ok} ok" + (" " + " ".join(bad) if bad else "")
        errors = " ".join(f"{code}={n}" for code, n in sorted(v["errors"].items())) or "-"
        battery = v.get("battery", "  -  ") + (" +" if v.get("charging") else "")
        rows.append([vid, v.get("status", "?"), battery, v.get("age", "-"), sensors, errors])
    return rows


def render(rows: list[list[str]], header: str) -> str:
    table = [["vehicle", "status", "battery", "heartbeat", "sensors", "errors"], *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [header] + ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join(lines)


def read_metrics(demo: Demo) -> str | None:
    """The aggregator's /metrics text, or None (said on stdout) when it cannot be read."""
    try:
        with urllib.request.urlopen(demo.url + "/metrics", timeout=5) as resp:
            return str(resp.read().decode("utf-8"))
    except OSError as exc:
        print(f"(cannot read {demo.url}/metrics: {exc})")
        return None


def show(demo: Demo, started: float, text: str) -> None:
    header = f"fleet at +{time.monotonic() - started:4.0f} s   ({demo.url}/ and /metrics)"
    if demo.prometheus_url:
        header += f"   alerts: {demo.prometheus_url}/alerts"
    block = render(fleet_rows(text), header)
    if sys.stdout.isatty():  # the screen is redrawn: the notes go with every table (else each is printed once)
        block = "\x1b[H\x1b[2J" + "\n".join([block, "", *demo.notes, "Ctrl-C stops the demo."])
    print(block + "\n", flush=True)


def note(demo: Demo, text: str) -> None:
    """Tell the operator what happens to the outage vehicle: under every table on a terminal, else once."""
    demo.notes.append(text)
    if not sys.stdout.isatty():
        print(text + "\n", flush=True)


@dataclass
class OutageCourse:
    """When the demo's outage begins, ends, and counts as drained. Pure: times and observations are handed in;
    `step` says what to do now: "cut", "restore", "report" or None."""

    after_s: float
    length_s: float
    phase: str = "waiting"
    """waiting -> cut -> draining -> done."""
    cut_at: float = 0.0
    restored_at: float = 0.0
    """Wall-clock times (seconds since the epoch, as Prometheus's timestamps)."""
    received: float = 0.0
    """Backlog snapshots the aggregator has received (every vehicle's), as last seen while draining."""
    at_restore: float = 0.0
    """Backlog snapshots the aggregator had received when the link came back."""
    drained: bool = False
    _changed_at: float = 0.0

    @property
    def under_way(self) -> bool:
        """Cut, or back and not yet reported: the demo does not stop at its --duration now."""
        return self.phase in ("cut", "draining")

    def step(self, now: float, elapsed: float, online: bool, received: float) -> str | None:
        """`now`: wall clock; `elapsed`: seconds since the demo started; `online`: the vehicle is up;
        `received`: backlog snapshots the aggregator received so far (every vehicle's)."""
        if self.phase == "waiting" and elapsed >= self.after_s and online:
            self.phase, self.cut_at = "cut", now
            return "cut"
        if self.phase == "cut" and now - self.cut_at >= self.length_s:
            self.phase, self.restored_at = "draining", now
            self.received = self.at_restore = received
            self._changed_at = now
            return "restore"
        if self.phase == "draining":
            if received != self.received:
                self.received, self._changed_at = received, now
            self.drained = self.received > self.at_restore and now - self._changed_at >= DRAIN_QUIET_S
            if self.drained or now - self.restored_at >= DRAIN_LIMIT_S:
                self.phase = "done"
                return "report"
        return None


def history_coverage(prometheus_url: str, vid: str, start: float, end: float) -> tuple[int, int]:
    """(seconds with a sample, seconds): the whole seconds in [start, end] and how many of them hold a sample of
    the vehicle's scraped vehicle_battery_level series in Prometheus. A query_range at a 1 s step of the samples
    counted per second (count_over_time over 1 s): a plain query_range would fill a gap from its 5 min lookback."""
    first, last = math.ceil(start) + 1, math.floor(end)
    query = f"count_over_time({battery_selector(vid)}[1s])"
    params = urllib.parse.urlencode({"query": query, "start": first, "end": last, "step": "1s"})
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/query_range?{params}", timeout=10) as resp:
        result = json.load(resp)["data"]["result"]
    covered = {float(t) for series in result for t, count in series["values"] if float(count) >= 1}
    return len(covered), max(0, last - first + 1)


def battery_selector(vid: str) -> str:
    """The vehicle's battery series as the demo's Prometheus scrapes it (and the backfill writes it)."""
    return f'vehicle_battery_level{{job="{prometheus_setup.AGGREGATOR_JOB}",vehicle_id="{vid}"}}'


def history_received(text: str) -> float:
    """Backlog snapshots the aggregator received in history batches so far, whatever became of them."""
    return sum(value for name, _, value in parse_exposition(text) if name == "telemetry_history_snapshots_total")


def vehicle_online(text: str, vid: str) -> bool:
    return any(
        name == "vehicle_up" and labels.get("vehicle_id") == vid and value == 1.0
        for name, labels, value in parse_exposition(text)
    )


def advance_outage(demo: Demo, course: OutageCourse, vid: str, elapsed: float, text: str) -> None:
    """Cut or restore the outage vehicle's link when its course says so, and tell the operator."""
    assert demo.link is not None
    action = course.step(time.time(), elapsed, vehicle_online(text, vid), history_received(text))
    if action == "cut":
        demo.link.cut()
        note(demo, f"{vid}: link cut for {course.length_s:g} s (journal keeps its snapshots)")
    elif action == "restore":
        demo.link.restore()
        note(demo, f"{vid}: link back after {course.restored_at - course.cut_at:.0f} s: backlog draining")
    elif action == "report":
        note(demo, history_report(demo, course, vid))


def history_report(demo: Demo, course: OutageCourse, vid: str) -> str:
    received = f"{course.received - course.at_restore:g} backlog snapshots received"
    if not course.drained:
        received = f"no backlog drained within {DRAIN_LIMIT_S:g} s ({received})"
    if not demo.prometheus_url:
        return (
            f"{vid}: {received}; history is not written (no remote-write target: prometheus is not installed); "
            "counts stay exact"
        )
    try:
        covered, seconds = history_coverage(demo.prometheus_url, vid, course.cut_at, course.restored_at)
    except (OSError, ValueError, KeyError) as exc:
        return f"{vid}: {received}; cannot ask Prometheus how much of the outage is filled: {exc}"
    minutes = math.ceil((time.time() - course.cut_at) / 60) + 1
    graph = urllib.parse.urlencode({"g0.expr": battery_selector(vid), "g0.tab": "0", "g0.range_input": f"{minutes}m"})
    share = covered / seconds if seconds else 0.0
    return (
        f"{vid}: {received}; {covered} of {seconds} s of the outage have samples in Prometheus ({share:.0%}), "
        f"at the vehicle's own times\n"
        f"  look at it: {demo.prometheus_url}/graph?{graph}\n"
        f"  (Grafana or Prometheus: {battery_selector(vid)}, query_range at a 1 s step)"
    )


def stop(demo: Demo) -> list[tuple[str, int | None]]:
    """Stop bridges, then simulators, then the aggregator; kill whatever ignores SIGINT/SIGTERM."""
    order = sorted(demo.children, key=lambda c: ("-bridge" not in c.name, "-simulator" not in c.name))
    codes: list[tuple[str, int | None]] = []
    for group in ("prometheus", "-bridge", "-simulator", "aggregator"):
        members = [c for c in order if group in c.name]
        for child in members:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGINT if group in ("-bridge", "-simulator") else signal.SIGTERM)
        for child in members:
            try:
                child.proc.wait(15)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
            if child.log is not None:
                child.log.close()
            codes.append((child.name, child.proc.returncode))
    for handle in demo.locks:
        handle.close()
    if demo.link is not None:
        demo.link.close()
    return codes


def _leaving_note(demo: Demo) -> str:
    leaving = leaving_index(len(demo.vehicles))
    text = f"geofences: {demo.workdir / 'zones.geojson'} (map on the status page)"
    if leaving is not None:
        text += f"; {demo.vehicles[leaving]} drives out of its operating area after {LEAVE_AFTER_S:g} s"
    return text + "\n"


def _outage_note(demo: Demo, course: OutageCourse | None) -> str:
    index = outage_index(len(demo.vehicles))
    if course is None or index is None:
        return "outage: none (it needs two vehicles or more, and --outage-s above 0)\n"
    history = (
        f"the aggregator writes its backlog into Prometheus at the vehicle's own times (history.remote_write_url: "
        f"{demo.prometheus_url}{prometheus_setup.REMOTE_WRITE_PATH})"
        if demo.prometheus_url
        else "history is not written (no remote-write target without Prometheus); its counts stay exact"
    )
    return (
        f"outage: {demo.vehicles[index]}'s link is cut for {course.length_s:g} s after {course.after_s:g} s; its "
        f"bridge journals what the aggregator did not acknowledge and uploads it when the link is back; {history}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tvm_observability.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=int(os.environ.get("VEHICLES") or 3))
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("DURATION") or 0),
        help="seconds, then the demo stops (0: at Ctrl-C); an outage under way is reported first",
    )
    parser.add_argument("--outage-after-s", type=float, default=OUTAGE_AFTER_S, help="when the link is cut")
    parser.add_argument("--outage-s", type=float, default=OUTAGE_S, help="how long it stays cut (0: no outage)")
    options = parser.parse_args(argv)
    if not 1 <= options.vehicles <= 50:
        parser.error("--vehicles must be between 1 and 50")
    if options.outage_s < 0 or options.outage_after_s < 0:
        parser.error("--outage-s and --outage-after-s must not be negative")
    workdir = Path(tempfile.mkdtemp(prefix="tvm_demo_"))
    demo = Demo(workdir=workdir, vehicles=[f"V{i}" for i in range(1, options.vehicles + 1)])
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    started = time.monotonic()
    code = 0
    cut_index = outage_index(len(demo.vehicles))
    course = (
        OutageCourse(options.outage_after_s, options.outage_s) if options.outage_s and cut_index is not None else None
    )
    try:
        start_aggregator(demo)
        for index, vid in enumerate(demo.vehicles):
            start_vehicle(demo, index, vid)
        prometheus = start_prometheus(demo)
        if prometheus:
            enable_history(demo)
        print(
            f"aggregator: {demo.url}/metrics  (also /healthz, /readyz; fleet status page: {demo.url}/)\n"
            f"{len(demo.vehicles)} vehicles, each a vehicle_simulator + vehicle_bridge in its own ROS domain; "
            f"{demo.vehicles[faulty_index(len(demo.vehicles))]} has injected faults "
            f"(lidar stops, camera errors {_FAULTY['fault_error_code']}). Logs: {workdir}\n"
            + _leaving_note(demo)
            + _outage_note(demo, course),
            flush=True,
        )
        print(
            f"prometheus: {prometheus}/alerts  (shipped rules from config/prometheus)\n"
            if prometheus
            else "prometheus: not installed (apt-get install prometheus), so no alerts in this demo\n",
            flush=True,
        )
        while not stopping.wait(REFRESH_S):
            text = read_metrics(demo)
            elapsed = time.monotonic() - started
            if text is not None:
                show(demo, started, text)
                if course is not None and cut_index is not None:
                    advance_outage(demo, course, demo.vehicles[cut_index], elapsed, text)
            if options.duration and elapsed >= options.duration and not (course and course.under_way):
                break
            dead = [c.name for c in demo.children if c.proc.poll() is not None]
            if dead:
                print(f"stopping: {', '.join(dead)} exited unexpectedly; see {workdir}", flush=True)
                code = 1
                break
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        code = 1
    finally:
        print("stopping the fleet...", flush=True)
        codes = stop(demo)
        unclean = [f"{name}={rc}" for name, rc in codes if rc != 0]
        print(
            f"stopped {len(codes)} processes" + (f"; unclean exits: {', '.join(unclean)}" if unclean else ", all clean")
        )
        if unclean:
            print(f"logs kept in {workdir}")
            code = code or 1
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
