"""End to end: real ROS 2 vehicles (vehicle_simulator + vehicle_bridge) -> real aggregator -> real Prometheus
with the shipped config and rules.

Prometheus runs with the shipped production intervals (15 s scrape, 15 s evaluation), the bridges with the
shipped vehicle_bridge.yaml (1 s period), the aggregator with its default offline_after_s (15 s), and the
shipped alert expressions; only `for` durations are capped and rule groups share the global interval, so
the slow alerts fire within the test's time budget. Measured: the time from a bridge's death (SIGKILL) to
its VehicleHeartbeatLost alert firing (MTTD). Every PromQL expression of the shipped Grafana dashboards is
then run against the same Prometheus.

Each vehicle runs in its own private ROS domain (support.ros_domain, what the ros_env fixture uses), since
/diagnostics is a global topic; the module-scoped stack cannot use the function-scoped fixture itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from bridge_support import BridgeProcess, write_token
from peers import (
    ROS_INSTALL,
    AlertmanagerProcess,
    PrometheusProcess,
    WebhookReceiver,
    require_binary,
    require_module,
)
from support import REPO, AggregatorProcess, ros_domain, wait_for

from tvm_observability.aggregator.config import default_config
from tvm_observability.auth import generate_token, hash_token
from tvm_observability.demo.processes import ChildProcess

ARTIFACTS = REPO / "test-artifacts"
SCRAPE_S = EVAL_S = 15.0
"""The shipped intervals (config/prometheus/prometheus.yml); asserted below so they cannot drift."""
OFFLINE_AFTER_S = 15.0
"""The aggregator's default offline_after_s."""
PUSH_PERIOD_S = 1.0
"""The shipped bridge's publish_period_s; asserted below."""
FOR_CAP_S = 15
ROSTER = ["V1", "V2", "V3", "V4", "V5"]
"""V1, V2 die; V3 has a held low battery, a stopped lidar and intermittent camera errors; V4 stays healthy;
V5 is on the roster but never reports."""
RUNNING = ROSTER[:4]
KILLED = ["V1", "V2"]
FAULTY = "V3"
FAULTS = {
    "fault_after_s": 0.0,
    "fault_low_battery": 0.06,
    "fault_stop_sensor": "lidar",
    "fault_error_sensor": "camera",
    "fault_error_code": "CAM_USB_RESET",
    "fault_error_period_s": 4.0,
}
KILL_STAGGER_S = 7.0
"""Bridges die 7 s apart, so each run samples different phases of the 15 s scrape/evaluation cycle."""
CRITICAL_GROUP_WAIT_S = 10.0
"""config/alertmanager/alertmanager.yml: the pager route's group_wait."""
MTTD_BOUND_S = OFFLINE_AFTER_S + PUSH_PERIOD_S + SCRAPE_S + EVAL_S
"""Worst case: last push, offline after 15 s, next scrape, next rule evaluation (docs/alerting.md)."""


class Vehicle:
    """One simulated vehicle: a vehicle_simulator and a vehicle_bridge process in its own namespace and domain."""

    def __init__(self, workdir: Path, vehicle_id: str, env: dict[str, str], url: str, token: str) -> None:
        self.vehicle_id = vehicle_id
        ns = vehicle_id.lower()
        params = FAULTS if vehicle_id == FAULTY else {}
        args = [sys.executable, "-m", "tvm_observability.sim.simulator", "--ros-args", "-r", f"__ns:=/{ns}"]
        for key, value in params.items():
            args += ["-p", f"{key}:={value}"]
        self.simulator = ChildProcess(args, env=env, log_file=workdir / f"{vehicle_id}-simulator.log")
        self.simulator.launch()
        token_file = write_token(workdir / f"{vehicle_id}.token", token)
        self.bridge = BridgeProcess(
            env,
            REPO / "config" / "vehicle_bridge.yaml",
            f"__ns:=/{ns}",
            f"vehicle_id:={vehicle_id}",
            f"aggregator_url:={url}",
            f"token_file:={token_file}",
        ).start()
        self.killed_at: float | None = None

    def kill_bridge(self) -> None:
        """SIGKILL the bridge, as a vehicle losing power or its bridge crashing; record the wall time."""
        self.bridge.stop(signal.SIGKILL)
        self.killed_at = time.time()

    def close(self) -> None:
        self.bridge.stop(signal.SIGINT)
        self.simulator.stop(signal.SIGINT)


def _cap_for(rules: dict[str, Any]) -> dict[str, Any]:
    """Shipped rules with every `for` capped at FOR_CAP_S and group intervals left to the global one."""
    for group in rules["groups"]:
        group.pop("interval", None)
        for rule in group["rules"]:
            if "for" in rule and _seconds(rule["for"]) > FOR_CAP_S:
                rule["for"] = f"{FOR_CAP_S}s"
    return rules


def _seconds(duration: str | float) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Aggregator + four ROS 2 vehicles (V5 on the roster but silent) + Prometheus with the shipped rules
    + Alertmanager with the shipped routing, its webhooks pointed at a local receiver."""
    require_module("rclpy", ROS_INSTALL)
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("e2e")
    tokens = {vid: generate_token() for vid in ROSTER}
    zones = workdir / "zones.geojson"  # an operating area around the simulators' routes, for the geofence panels
    site = [[13.39, 52.51], [13.42, 52.51], [13.42, 52.53], [13.39, 52.53], [13.39, 52.51]]
    area = {"type": "Feature", "properties": {"name": "site", "kind": "operating_area"}}
    zones.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{**area, "geometry": {"type": "Polygon", "coordinates": [site]}}],
            }
        ),
        encoding="utf-8",
    )
    config = workdir / "aggregator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "environment": "test",
                "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()},
                "geofences": {"file": str(zones)},
            }
        ),
        encoding="utf-8",
    )
    with AggregatorProcess(config) as agg, contextlib.ExitStack() as stack:
        vehicles: dict[str, Vehicle] = {}
        for vid in RUNNING:
            env = {**os.environ, **stack.enter_context(ros_domain())}
            vehicles[vid] = Vehicle(workdir, vid, env, agg.url, tokens[vid])
            stack.callback(vehicles[vid].close)
        target = agg.url.removeprefix("http://")
        hooks = stack.enter_context(WebhookReceiver())
        am = stack.enter_context(AlertmanagerProcess(alertmanager, workdir / "alertmanager", hooks.url))
        with PrometheusProcess(
            prometheus,
            workdir / "prometheus",
            target=target,
            rules_transform=_cap_for,
            alertmanagers=[am.url.removeprefix("http://")],
        ) as prom:
            wait_for(
                lambda: _values(prom, "vehicle_up == 1") == {v: 1.0 for v in RUNNING},
                3 * SCRAPE_S + 60,
                interval=0.5,
                what="Prometheus to scrape every running vehicle as up",
            )
            # Until its first scrape (up to ~20 s after start: target discovery, then the target's offset in the
            # interval) Prometheus has no `up` at all, so `absent(up)` holds; with `for` capped at 15 s it can fire
            # before that scrape (with the shipped 1m it cannot). The test starts once the rules have seen the scrape.
            wait_for(
                lambda: not any(_key(a)[0] == "TelemetryAggregatorDown" for a in prom.api("alerts")["alerts"]),
                3 * EVAL_S + 30,
                interval=0.5,
                what="Prometheus's rules to see the aggregator scraped",
            )
            yield {"agg": agg, "prom": prom, "vehicles": vehicles, "hooks": hooks}


def _values(prom: PrometheusProcess, expr: str) -> dict[str, float]:
    return {s["metric"].get("vehicle_id", ""): float(s["value"][1]) for s in prom.query(expr)}


def _unix(rfc3339: str) -> float:
    """Prometheus's activeAt (nanosecond fraction, Z or offset) as Unix time; Python 3.10 parses 6 digits."""
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339.replace("Z", "+00:00"))
    return datetime.fromisoformat(stamp).timestamp()


def _key(alert: dict[str, Any]) -> tuple[str, str]:
    labels = alert["labels"]
    return labels["alertname"], labels.get("vehicle_id", "")


@pytest.fixture(scope="module")
def killed(stack: dict[str, Any]) -> dict[str, Vehicle]:
    """The KILLED vehicles' bridges SIGKILLed, KILL_STAGGER_S apart, once per module: whichever test comes
    first kills them (the detection test measures from these kill times; the dashboard test needs dead
    vehicles among the live ones)."""
    vehicles: dict[str, Vehicle] = stack["vehicles"]
    for i, vid in enumerate(KILLED):
        if i:
            time.sleep(KILL_STAGGER_S)
        vehicles[vid].kill_bridge()
    return {vid: vehicles[vid] for vid in KILLED}


@pytest.mark.peer
@pytest.mark.ros
@pytest.mark.timeout(300)
def test_dead_vehicle_detected_within_a_minute_and_faults_alert(stack, killed):
    prom: PrometheusProcess = stack["prom"]
    vehicles: dict[str, Vehicle] = stack["vehicles"]

    expected = {
        *(("VehicleHeartbeatLost", vid) for vid in KILLED),
        ("FleetDegraded", ""),
        ("VehicleLowBattery", FAULTY),
        ("VehicleBatteryCritical", FAULTY),
        ("VehicleSensorError", FAULTY),
        ("VehicleErrorsIncreasing", FAULTY),
        ("VehicleOffline", "V5"),
    }
    seen: dict[tuple[str, str], dict[str, Any]] = {}

    def all_firing() -> bool:
        for alert in prom.firing():
            seen.setdefault(_key(alert), alert)
        return expected <= seen.keys()

    wait_for(all_firing, 2 * MTTD_BOUND_S + 30, interval=0.25, what=f"alerts {sorted(expected - seen.keys())}")
    unexpected = {
        k
        for k in seen.keys() - expected
        if k[1] in {"V4", "V5"} or k[0] in {"HighErrorRate", "TelemetryAggregatorDown"}
    }
    assert unexpected == set(), f"alerts for healthy vehicles or a healthy aggregator: {unexpected}\n" + _evidence(
        stack, unexpected, seen
    )
    assert ("VehicleHeartbeatLost", "V5") not in seen, "a never-heard-from vehicle is VehicleOffline, not lost"
    sensor_alerts = {a["labels"]["sensor"] for a in prom.firing() if _key(a) == ("VehicleSensorError", FAULTY)}
    assert "lidar" in sensor_alerts, sensor_alerts  # stopped publishing: stale
    assert seen[("VehicleErrorsIncreasing", FAULTY)]["labels"]["error_code"] == "CAM_USB_RESET"

    active_at = {vid: _unix(seen[("VehicleHeartbeatLost", vid)]["activeAt"]) for vid in KILLED}
    mttd = {vid: active_at[vid] - vehicles[vid].killed_at for vid in KILLED}
    # The whole chain: Alertmanager pages (critical group_wait 10 s) for a lost vehicle or the degraded fleet.
    hooks: WebhookReceiver = stack["hooks"]
    paged = {("VehicleHeartbeatLost", vid) for vid in KILLED} | {("FleetDegraded", "")}
    paged_at = wait_for(lambda: hooks.first_time("/pager", paged), 120, interval=0.25, what="a page for the loss")
    time_to_page = paged_at - vehicles[KILLED[0]].killed_at
    # Order, not speed (a loaded machine only delays): no page before the first paging alert (a lost vehicle or
    # the degraded fleet, whichever Prometheus saw first) was active and the critical route's group_wait had
    # passed (1 s for activeAt's rounding against this process's clock).
    first_active = min(_unix(seen[key]["activeAt"]) for key in paged)
    assert paged_at >= first_active + CRITICAL_GROUP_WAIT_S - 1, (paged_at, first_active)
    wait_for(lambda: ("VehicleSensorError", FAULTY) in hooks.firing("/chat"), 60, what="a chat warning")
    assert not {a for a in hooks.firing("/pager") if a[1] in {"V4", "V5"}}, "paged for a healthy vehicle"

    ARTIFACTS.mkdir(exist_ok=True)
    report = {
        "scrape_interval_s": SCRAPE_S,
        "evaluation_interval_s": EVAL_S,
        "offline_after_s": OFFLINE_AFTER_S,
        "push_period_s": PUSH_PERIOD_S,
        "worst_case_bound_s": MTTD_BOUND_S,
        "mttd_s": {vid: round(value, 2) for vid, value in mttd.items()},
        "first_page_after_first_kill_s": round(time_to_page, 2),
    }
    (ARTIFACTS / "mttd.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print("MTTD (s):", report["mttd_s"], "first page after (s):", report["first_page_after_first_kill_s"])
    for vid, seconds in mttd.items():
        # Never before the aggregator could call it offline. How late is a measurement (printed, written to
        # mttd.json): the bound is computed from the shipped settings in test_shipped_settings_detect_...
        assert seconds >= OFFLINE_AFTER_S - PUSH_PERIOD_S - 1, (vid, seconds)


def _evidence(stack: dict[str, Any], keys: set[tuple[str, str]], seen: dict[tuple[str, str], Any]) -> str:
    """What an unexpected alert rests on: the alerts as Prometheus saw them, its scrape target, the last five
    minutes of `up` and scrape durations, its own warnings and the aggregator's."""
    prom: PrometheusProcess = stack["prom"]
    agg: AggregatorProcess = stack["agg"]
    targets = [
        {k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape", "lastScrapeDuration")}
        for t in prom.api("targets")["activeTargets"]
    ]
    series = {
        expr: [s["values"] for s in prom.query(expr)]
        for expr in ("up[5m]", "scrape_duration_seconds[5m]", "scrape_samples_scraped[5m]")
    }
    prom_lines = [line for line in prom.lines if "level=warn" in line or "level=error" in line]
    agg_lines = [r for r in agg.logs if r.get("level") not in ("INFO", "DEBUG")]
    return "\n".join(
        [
            f"alerts: {[seen[k] for k in keys]}",
            f"now: {time.time():.3f}",
            f"targets: {targets}",
            f"series: {series}",
            "prometheus warnings:",
            *prom_lines[-30:],
            "aggregator warnings:",
            *map(json.dumps, agg_lines[-30:]),
        ]
    )


def _dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expr) for every target of every shipped dashboard."""
    found = []
    for path in sorted((REPO / "config" / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((path.stem, panel["title"], target["expr"]))
    return found


def _substitute(expr: str, vehicle_id: str) -> str:
    """Grafana's variables as Grafana would fill them for a 15 s scrape interval."""
    for name, value in {
        "$vehicle_id": vehicle_id,
        "${vehicle_id}": vehicle_id,
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$__range": "1h",
    }.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


@pytest.mark.peer
@pytest.mark.ros
@pytest.mark.timeout(300)
def test_every_dashboard_query_returns_data(stack, killed):
    prom: PrometheusProcess = stack["prom"]
    exprs = _dashboard_exprs()
    assert len(exprs) >= 30
    # The fleet the dashboards are checked against: the killed vehicles seen offline, alerts firing (already
    # so after the detection test; established here when this test runs alone).
    wait_for(
        lambda: _values(prom, "vehicle_up == 0").keys() >= set(killed) and prom.firing(),
        2 * MTTD_BOUND_S + 30,
        interval=0.5,
        what=f"Prometheus to see {sorted(killed)} offline and an alert firing",
    )
    # Rates need two scrapes of every series; the SLO rules one evaluation after that.
    wait_for(lambda: prom.query("vehicle:vehicle_up:ratio30d"), 3 * EVAL_S + 30, interval=1, what="SLO rules")
    for dashboard in sorted({d for d, _, _ in exprs}):
        variables = json.loads((REPO / "config" / "grafana" / "dashboards" / f"{dashboard}.json").read_text())
        for variable in variables.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                label = variable["query"]["query"].split(",")[-1].strip(" )")
                assert stack["prom"].api(f"label/{label}/values"), (dashboard, variable["name"])
    empty = []
    for dashboard, title, expr in exprs:
        per_vehicle = "$vehicle_id" in expr or "${vehicle_id}" in expr
        # The faulty vehicle reports everything; a dead one keeps its last values (it has no error counts).
        checks = [FAULTY, "V1"] if per_vehicle and "vehicle_errors_total" not in expr else [FAULTY]
        empty += [(dashboard, title, vid, expr) for vid in checks if not prom.query(_substitute(expr, vid))]
    assert empty == [], "dashboard queries without data:\n" + "\n".join(map(str, empty))


def test_shipped_settings_detect_and_page_a_dead_vehicle_within_a_minute():
    """The detection bound (docs/alerting.md) from the shipped files, and the constants this module runs with."""
    shipped = yaml.safe_load((REPO / "config" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    scrape_s = _seconds(shipped["global"]["scrape_interval"])
    eval_s = _seconds(shipped["global"]["evaluation_interval"])
    routes = yaml.safe_load((REPO / "config" / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8"))
    critical = next(r for r in routes["route"]["routes"] if r.get("matchers") == ['severity="critical"'])
    group_wait_s = _seconds(critical["group_wait"])
    bridge_params = yaml.safe_load((REPO / "config" / "vehicle_bridge.yaml").read_text(encoding="utf-8"))
    period_s = bridge_params["/**"]["ros__parameters"]["publish_period_s"]
    offline_after_s = default_config().offline_after_s
    alerts = yaml.safe_load((REPO / "config" / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    lost = next(r for g in alerts["groups"] for r in g["rules"] if r.get("alert") == "VehicleHeartbeatLost")
    for_s = _seconds(lost.get("for", 0))

    assert (scrape_s, eval_s, group_wait_s, period_s, offline_after_s) == (
        SCRAPE_S,
        EVAL_S,
        CRITICAL_GROUP_WAIT_S,
        PUSH_PERIOD_S,
        OFFLINE_AFTER_S,
    )
    detect_s = period_s + offline_after_s + scrape_s + eval_s + for_s
    assert detect_s == MTTD_BOUND_S + for_s
    assert detect_s + group_wait_s < 60, f"a dead vehicle may page only after {detect_s + group_wait_s:g} s"


def test_e2e_derives_from_the_shipped_files(tmp_path: Path):
    """The test copy of the rules differs from the shipped ones only in capped `for` and group intervals."""
    from tvm_observability.demo.prometheus_setup import write_setup

    config = write_setup(tmp_path, target="127.0.0.1:1", rules_transform=_cap_for)
    derived = yaml.safe_load(config.read_text())
    assert derived["global"]["scrape_interval"] == "15s" and "alerting" not in derived
    shipped = yaml.safe_load((REPO / "config" / "prometheus" / "alerts.yml").read_text())
    copied = yaml.safe_load((tmp_path / "alerts.yml").read_text())
    for ours, theirs in zip(
        (r for g in copied["groups"] for r in g["rules"]),
        (r for g in shipped["groups"] for r in g["rules"]),
        strict=True,
    ):
        assert ours["expr"] == theirs["expr"] and ours["labels"] == theirs["labels"]
        assert ours.get("keep_firing_for") == theirs.get("keep_firing_for")
