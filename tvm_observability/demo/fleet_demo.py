"""`make demo`: a telemetry_aggregator plus a simulated fleet of real ROS 2 processes, shown live.

Each vehicle is a vehicle_simulator process and a vehicle_bridge process in the vehicle's own
namespace and its own ROS domain (localhost discovery only), pushing to one aggregator on
127.0.0.1 with per-vehicle credentials generated into a private temporary directory (tokens in
0600 files, the aggregator config holds only their hashes). One vehicle has injected faults.
Geofences: an operating area around the fleet and a keep-out zone inside it; with three vehicles or more the
last one drives out of the area after LEAVE_AFTER_S (VehicleOutsideOperatingArea, the status page's map).
A compact fleet table, read from /metrics, is printed every couple of seconds.
Ctrl-C (or --duration) stops bridges, simulators and the aggregator in that order.

Usage: python -m tvm_observability.demo [--vehicles N] [--duration S]   (make demo VEHICLES=N DURATION=S)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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
    config = {
        "listen": "127.0.0.1:0",
        "offline_after_s": OFFLINE_AFTER_S,
        "environment": "demo",
        "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()},
        "geofences": {"file": str(zones)},
    }
    config_path = demo.workdir / "aggregator.yaml"
    _write_private(config_path, yaml.safe_dump(config))
    aggregator = processes.AggregatorProcess(
        processes.aggregator_command(config_path),
        keep=200,
        log_file=demo.workdir / "aggregator.log",
        start_new_session=True,  # as _spawn: Ctrl-C reaches the demo only
        preexec_fn=_die_with_parent,
    )
    try:
        demo.url = aggregator.start(30)
    finally:
        if aggregator.proc is not None:
            demo.children.append(Child("aggregator", aggregator.proc, None))


def start_prometheus(demo: Demo) -> str | None:
    """Prometheus with the shipped config and rules scraping the demo's aggregator; its URL, or None
    when the `prometheus` binary is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    workdir = demo.workdir / "prometheus"
    config = prometheus_setup.write_setup(workdir / "config", target=demo.url.removeprefix("http://"))
    child = _spawn(demo, "prometheus", prometheus_setup.command(binary, config, workdir / "data"), dict(os.environ))
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
    bridge_args += [
        "-p", f"vehicle_id:={vid}",
        "-p", f"aggregator_url:={demo.url}",
        "-p", f"token_file:={demo.workdir / f'{vid}.token'}",
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


def show(demo: Demo, started: float) -> None:
    try:
        with urllib.request.urlopen(demo.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode("utf-8")
    except OSError as exc:
        print(f"(cannot read {demo.url}/metrics: {exc})")
        return
    header = f"fleet at +{time.monotonic() - started:4.0f} s   ({demo.url}/ and /metrics)"
    if demo.prometheus_url:
        header += f"   alerts: {demo.prometheus_url}/alerts"
    block = render(fleet_rows(text), header)
    if sys.stdout.isatty():
        block = "\x1b[H\x1b[2J" + block + "\n\nCtrl-C stops the demo."
    print(block + "\n", flush=True)


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
    return codes


def _leaving_note(demo: Demo) -> str:
    leaving = leaving_index(len(demo.vehicles))
    note = f"geofences: {demo.workdir / 'zones.geojson'} (map on the status page)"
    if leaving is not None:
        note += f"; {demo.vehicles[leaving]} drives out of its operating area after {LEAVE_AFTER_S:g} s"
    return note + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tvm_observability.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=int(os.environ.get("VEHICLES") or 3))
    parser.add_argument("--duration", type=float, default=float(os.environ.get("DURATION") or 0))
    options = parser.parse_args(argv)
    if not 1 <= options.vehicles <= 50:
        parser.error("--vehicles must be between 1 and 50")
    workdir = Path(tempfile.mkdtemp(prefix="tvm_demo_"))
    demo = Demo(workdir=workdir, vehicles=[f"V{i}" for i in range(1, options.vehicles + 1)])
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    started = time.monotonic()
    code = 0
    try:
        start_aggregator(demo)
        for index, vid in enumerate(demo.vehicles):
            start_vehicle(demo, index, vid)
        prometheus = start_prometheus(demo)
        print(
            f"aggregator: {demo.url}/metrics  (also /healthz, /readyz; fleet status page: {demo.url}/)\n"
            f"{len(demo.vehicles)} vehicles, each a vehicle_simulator + vehicle_bridge in its own ROS domain; "
            f"{demo.vehicles[faulty_index(len(demo.vehicles))]} has injected faults "
            f"(lidar stops, camera errors {_FAULTY['fault_error_code']}). Logs: {workdir}\n" + _leaving_note(demo),
            flush=True,
        )
        print(
            f"prometheus: {prometheus}/alerts  (shipped rules from config/prometheus)\n"
            if prometheus
            else "prometheus: not installed (apt-get install prometheus), so no alerts in this demo\n",
            flush=True,
        )
        while not stopping.wait(REFRESH_S):
            show(demo, started)
            if options.duration and time.monotonic() - started >= options.duration:
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
