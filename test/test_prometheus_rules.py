"""The shipped Prometheus rules and Alertmanager config: valid, unit-tested alert by alert, well annotated."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from peers import require_binary
from support import REPO

PROM = REPO / "config" / "prometheus"
ALERTMANAGER = REPO / "config" / "alertmanager" / "alertmanager.yml"
PROMTOOL_TESTS = REPO / "test" / "promtool"
SEVERITIES = {"critical", "warning", "info"}


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)


def test_every_alert_is_annotated_and_has_a_runbook():
    rules = _alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook"] == f"docs/runbooks/{name}.md"
        runbook = REPO / annotations["runbook"]
        assert runbook.is_file(), f"{name}: missing {runbook}"
        text = runbook.read_text(encoding="utf-8")
        for heading in ("## Symptoms", "## Diagnosis", "## Mitigation", "## Resolution"):
            assert heading in text, f"{runbook.name} lacks {heading}"


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet():
    suite = yaml.safe_load((PROMTOOL_TESTS / "alerts_test.yml").read_text(encoding="utf-8"))
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


def test_per_vehicle_value_alerts_are_gated_on_vehicle_up():
    """Offline vehicles keep their last values exported: value alerts must not fire for them too."""
    for rule in _alert_rules():
        if rule["labels"].get("scope") == "vehicle" and rule["alert"] not in {
            "VehicleHeartbeatLost",
            "VehicleOffline",
            "VehicleErrorsIncreasing",  # counts only grow while the vehicle reports
        }:
            assert "vehicle_up == 1" in rule["expr"], rule["alert"]


@pytest.mark.peer
def test_promtool_checks_rules_and_config():
    promtool = require_binary("promtool")
    result = _run(promtool, "check", "rules", PROM / "alerts.yml", PROM / "recording.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run(promtool, "check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.peer
@pytest.mark.parametrize("suite", ["alerts_test.yml", "recording_test.yml"])
def test_promtool_unit_tests(suite: str):
    promtool = require_binary("promtool")
    result = _run(promtool, "test", "rules", PROMTOOL_TESTS / suite)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.peer
def test_amtool_accepts_the_alertmanager_config():
    amtool = require_binary("amtool")
    result = _run(amtool, "check-config", ALERTMANAGER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 inhibit rules" in result.stdout


@pytest.mark.peer
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=VehicleHeartbeatLost", "severity=critical", "vehicle_id=V1"], "pager"),
        (["alertname=VehicleLowBattery", "severity=warning", "vehicle_id=V1"], "chat"),
        (["alertname=Something", "severity=info"], "null"),
        (["alertname=Unlabelled"], "null"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str):
    amtool = require_binary("amtool")
    result = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_inhibits_vehicle_alerts_while_the_aggregator_is_down():
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    assert config["route"]["group_by"] == ["alertname"]
    inhibit = {tuple(rule["source_matchers"]): rule for rule in config["inhibit_rules"]}
    down = inhibit[('alertname="TelemetryAggregatorDown"', 'shard=""')]  # unsharded: the one aggregator
    assert down["target_matchers"] == ['scope="vehicle"']
    # Sharded: a whole shard down pages once, for the shard; nothing sharded silences vehicle alerts.
    shard_down = inhibit[('alertname="TelemetryShardDown"',)]
    assert shard_down["target_matchers"] == ['alertname="TelemetryAggregatorDown"']
    assert shard_down["equal"] == ["job", "shard"]
    assert [rule for rule in config["inhibit_rules"] if rule["target_matchers"] == ['scope="vehicle"']] == [down]
    vehicle_alerts = {rule["alert"] for rule in _alert_rules() if rule["labels"].get("scope") == "vehicle"}
    assert {a for a in vehicle_alerts if a.startswith("Vehicle")} == vehicle_alerts


def test_rules_and_dashboards_only_use_metrics_the_aggregator_exports():
    """Guards the metric-name contract: a renamed metric would silently turn an alert or panel into 'no data'."""
    import re

    from prometheus_client import CollectorRegistry, generate_latest
    from support import parse_metrics
    from test_collector import fixture_fleet
    from test_geofence_service import violating_monitor

    from tvm_observability.aggregator.collector import GeofenceCollector, ServiceMetrics, disable_created_series

    disable_created_series()  # as the app factory does at start-up
    fleet, fleet_registry, _ = fixture_fleet()
    geofence_registry = CollectorRegistry()
    geofence_registry.register(GeofenceCollector(fleet, violating_monitor(fleet)))
    service_registry = CollectorRegistry()
    service = ServiceMetrics(service_registry)
    service.observe_request("GET", "/metrics", 200, 0.01)  # labelled families appear on first use
    exported = {
        name
        for registry in (fleet_registry, service_registry, geofence_registry)
        for name, _ in parse_metrics(generate_latest(registry).decode())
    }
    texts = [(PROM / name).read_text(encoding="utf-8") for name in ("alerts.yml", "recording.yml")]
    texts += [p.read_text(encoding="utf-8") for p in (REPO / "config" / "grafana" / "dashboards").glob("*.json")]
    # Metric names, not parts of recorded names (a:b:c); minus the label name and the job name.
    names = re.compile(r"(?<![:\w])((?:vehicles?|http|telemetry)_[a-z_]+)(?![:\w])")
    used = {m for text in texts for m in names.findall(text)} - {"vehicle_id", "telemetry_aggregator"}
    assert len(used) >= 25, sorted(used)
    assert used, "no metric names found"
    assert sorted(used - exported) == []
