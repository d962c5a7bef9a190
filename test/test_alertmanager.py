"""The shipped alertmanager.yml in a real Alertmanager: routing by severity, grouping by alert name, and every
inhibition rule, with the example webhooks pointed at a local receiver."""

from __future__ import annotations

import contextlib

import pytest
from peers import AlertmanagerProcess, WebhookReceiver, require_binary
from support import wait_for

JOB = "telemetry_aggregator"


def _alert(name: str, severity: str, job: str, vehicle_id: str | None = None, **labels: str) -> dict:
    labels = {"alertname": name, "severity": severity, "job": job, **labels}
    if vehicle_id is not None:
        labels |= {"vehicle_id": vehicle_id, "scope": "vehicle"}
    return {"labels": labels, "annotations": {"summary": name}}


# Three independent sites (job labels), so each inhibition rule is seen on its own.
ALERTS = [
    # Site A: the aggregator is down, so its vehicle alerts are noise.
    _alert("TelemetryAggregatorDown", "critical", JOB),
    _alert("VehicleHeartbeatLost", "critical", JOB, "A1"),
    _alert("VehicleSensorError", "warning", JOB, "A2", sensor="lidar"),
    # Site B: three vehicles lost (one notification), critical battery over low battery, lost over offline.
    *(_alert("VehicleHeartbeatLost", "critical", "site-b", vid) for vid in ("B1", "B2", "B3")),
    _alert("VehicleOffline", "warning", "site-b", "B1"),
    _alert("VehicleOffline", "warning", "site-b", "B9"),
    _alert("VehicleBatteryCritical", "critical", "site-b", "B4"),
    _alert("VehicleLowBattery", "warning", "site-b", "B4"),
    _alert("VehicleLowBattery", "warning", "site-b", "B5"),
    # Site B, geofences: a lost or offline vehicle's live geofence alerts are inhibited, the silent one is not.
    _alert("VehicleOutsideOperatingArea", "critical", "site-b", "B1", zone="campus", kind="operating_area"),
    _alert("VehicleInKeepOutZone", "critical", "site-b", "B9", zone="pond", kind="keep_out"),
    _alert("VehicleSilentInGeofenceViolation", "critical", "site-b", "B9", zone="pond", kind="keep_out"),
    _alert("VehicleOutsideOperatingArea", "critical", "site-b", "B6", zone="campus", kind="operating_area"),
    # Site C: the fleet is degraded, which replaces the per-vehicle loss alerts.
    _alert("FleetDegraded", "critical", "site-c"),
    _alert("VehicleHeartbeatLost", "critical", "site-c", "C1"),
    _alert("VehicleOffline", "warning", "site-c", "C2"),
    # Site D, sharded (docs/scaling.md): one replica of s1 down hides no vehicle alert; all of s2 down pages once
    # for the shard, its replica's TelemetryAggregatorDown is inhibited.
    _alert("TelemetryAggregatorDown", "critical", "site-d", shard="s1", instance="a1:9101"),
    _alert("VehicleHeartbeatLost", "critical", "site-d", "D1"),
    _alert("TelemetryShardDown", "critical", "site-d", shard="s2"),
    _alert("TelemetryAggregatorDown", "critical", "site-d", shard="s2", instance="a2:9102"),
    # Info goes nowhere.
    _alert("SomethingToKnow", "info", "site-c"),
]

INHIBITED = {
    ("VehicleHeartbeatLost", "A1"),
    ("VehicleSensorError", "A2"),
    ("VehicleOffline", "B1"),
    ("VehicleLowBattery", "B4"),
    ("VehicleOutsideOperatingArea", "B1"),
    ("VehicleInKeepOutZone", "B9"),
    ("VehicleHeartbeatLost", "C1"),
    ("VehicleOffline", "C2"),
    ("TelemetryAggregatorDown", "a2:9102"),
}


@pytest.mark.peer
@pytest.mark.timeout(180)
def test_routing_grouping_and_inhibition(tmp_path):
    binary = require_binary("prometheus-alertmanager")
    with WebhookReceiver() as hooks, AlertmanagerProcess(binary, tmp_path, hooks.url) as am:
        am.post_alerts(ALERTS)
        # Alertmanager marks inhibitions when it flushes a group (after group_wait): poll until settled.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: _suppressed(am) == INHIBITED, 60, interval=0.5, what="inhibitions")
        assert _suppressed(am) == INHIBITED
        assert len(_states(am)) == len(ALERTS)

        pager = {("TelemetryAggregatorDown", ""), ("FleetDegraded", ""), ("VehicleBatteryCritical", "B4")}
        pager |= {("TelemetryShardDown", ""), ("VehicleHeartbeatLost", "D1")}
        pager |= {("VehicleHeartbeatLost", vid) for vid in ("B1", "B2", "B3")}
        pager |= {("VehicleSilentInGeofenceViolation", "B9"), ("VehicleOutsideOperatingArea", "B6")}
        chat = {("VehicleOffline", "B9"), ("VehicleLowBattery", "B5")}
        # Warnings wait for the default group_wait (30 s).
        wait_for(
            lambda: hooks.firing("/pager") >= pager and hooks.firing("/chat") >= chat,
            90,
            interval=0.5,
            what="pager and chat notifications",
        )
        assert hooks.firing("/pager") == pager
        assert hooks.firing("/chat") == chat
        assert set(hooks.received) == {"/pager", "/chat"}  # info reached no receiver
        # Grouped by alert name: the three lost vehicles of site B (and D1 of site D) came in one notification.
        lost = [n for n in hooks.received["/pager"] if n["groupLabels"] == {"alertname": "VehicleHeartbeatLost"}]
        assert len(lost) == 1 and len(lost[0]["alerts"]) == 4


def _states(am: AlertmanagerProcess) -> dict[tuple[str, str], list[str]]:
    return {
        (a["labels"]["alertname"], a["labels"].get("vehicle_id") or a["labels"].get("instance", "")): a["status"][
            "inhibitedBy"
        ]
        for a in am.get_json("/api/v2/alerts")
    }


def _suppressed(am: AlertmanagerProcess) -> set[tuple[str, str]]:
    return {key for key, inhibited_by in _states(am).items() if inhibited_by}
