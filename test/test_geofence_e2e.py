"""Geofences for real: rclpy publishers -> vehicle_bridge process -> aggregator process -> a real Prometheus with
the shipped rules. A vehicle driven from inside its operating area across the boundary and into a keep-out
zone changes vehicle_geofence_status and fires the alerts; jitter within the margin does not flap; a lost fix
gives `unknown` and pages the last known violation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from bridge_support import BridgeProcess, FakeVehicle, write_bridge_params, write_token
from peers import PrometheusProcess, require_binary
from support import AggregatorProcess, sample, scrape, wait_for
from test_geofence import collection, feature

from tvm_observability.aggregator.geofence import meters_per_degree
from tvm_observability.auth import generate_token, hash_token

pytestmark = [pytest.mark.ros, pytest.mark.peer]

LAT0, LON0 = 52.5200, 13.4050
"""FakeVehicle's default fix: the campus is drawn around it."""
KX, KY = meters_per_degree(LAT0)
FOR_CAP_S = 3
STATUSES = ("inside", "outside_operating_area", "in_keep_out", "unknown")


def square(east_m: float, half_m: float) -> list[list[float]]:
    lon, dx, dy = LON0 + east_m / KX, half_m / KX, half_m / KY
    ring = [[lon - dx, LAT0 - dy], [lon + dx, LAT0 - dy], [lon + dx, LAT0 + dy], [lon - dx, LAT0 + dy]]
    return [*ring, ring[0]]


def fix_at(east_m: float) -> tuple[float, float]:
    return LAT0, LON0 + east_m / KX


def cap_for(rules: dict[str, Any]) -> dict[str, Any]:
    """The shipped rules with every `for` capped at FOR_CAP_S (the silent-in-violation alert's 30 s)."""
    for group in rules["groups"]:
        group.pop("interval", None)
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{FOR_CAP_S}s"
    return rules


def status(url: str) -> str:
    samples = scrape(url)
    hot = [s for s in STATUSES if sample(samples, "vehicle_geofence_status", vehicle_id="V1", status=s) == 1.0]
    assert len(hot) == 1, hot
    return hot[0]


def firing(prom: PrometheusProcess) -> set[tuple[str, str]]:
    return {(a["labels"]["alertname"], a["labels"].get("zone", "")) for a in prom.firing()}


@pytest.mark.timeout(240)
def test_a_vehicle_driven_across_its_zones_with_a_real_bridge_and_prometheus(tmp_path: Path, ros_env) -> None:
    prometheus = require_binary("prometheus")
    zones = tmp_path / "zones.geojson"
    zones.write_text(
        json.dumps(
            collection(
                feature("campus", "operating_area", [square(0, 500)]),
                feature("pond", "keep_out", [square(-300, 50)]),
            )
        ),
        encoding="utf-8",
    )
    token = generate_token()
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "environment": "test",
                "offline_after_s": 3,
                "vehicles": {"V1": {"token_sha256": hash_token(token)}},
                "geofences": {"file": str(zones), "margin_m": 5, "max_fix_age_s": 3},
            }
        ),
        encoding="utf-8",
    )
    params = write_bridge_params(
        tmp_path / "bridge.yaml",
        vehicle_id="V1",
        aggregator_url="http://127.0.0.1:1",  # replaced below, once the aggregator's port is known
        token_file=str(write_token(tmp_path / "v1.token", token)),
    )
    vehicle = FakeVehicle()
    try:
        with AggregatorProcess(config) as agg:
            text = params.read_text(encoding="utf-8").replace("http://127.0.0.1:1", agg.url)
            params.write_text(text, encoding="utf-8")
            with (
                BridgeProcess(ros_env, params),
                PrometheusProcess(
                    prometheus,
                    tmp_path / "prometheus",
                    target=agg.url.removeprefix("http://"),
                    scrape_interval="1s",
                    evaluation_interval="1s",
                    rules_transform=cap_for,
                ) as prom,
            ):
                drive(agg.url, prom, vehicle)
    finally:
        vehicle.close()


def at_longitude(url: str, lon: float) -> bool:
    """Whether the aggregator has a push with this longitude (the bridge relays the new fix)."""
    value = sample(scrape(url), "vehicle_longitude", vehicle_id="V1")
    return value is not None and math.isclose(value, lon, abs_tol=1e-9)


def move(url: str, vehicle: FakeVehicle, east_m: float) -> None:
    vehicle.fix = fix_at(east_m)
    wait_for(lambda: at_longitude(url, vehicle.fix[1]), 30, what=f"V1's fix {east_m} m east at the aggregator")


def drive(url: str, prom: PrometheusProcess, vehicle: FakeVehicle) -> None:
    move(url, vehicle, 0)
    assert status(url) == "inside"
    # Across the east boundary (500 m) and jitter around it within the 5 m margin: one change, no flapping.
    move(url, vehicle, 502)
    assert status(url) == "outside_operating_area"
    for east_m in (498, 501, 497, 503, 498):
        move(url, vehicle, east_m)
        assert status(url) == "outside_operating_area", east_m
    move(url, vehicle, 490)  # back inside by more than the margin
    assert status(url) == "inside"
    # Out of the campus for good: the alert fires in Prometheus.
    move(url, vehicle, 650)
    assert status(url) == "outside_operating_area"
    wait_for(lambda: ("VehicleOutsideOperatingArea", "campus") in firing(prom), 60, what="outside alert")
    # Into the pond (the campus's keep-out zone).
    move(url, vehicle, -300)
    assert status(url) == "in_keep_out"
    wait_for(lambda: ("VehicleInKeepOutZone", "pond") in firing(prom), 60, what="keep-out alert")
    # The fix is lost in the pond: unknown, never a violation; the last known violation pages.
    vehicle.fix = None
    wait_for(lambda: sample(scrape(url), "vehicle_gps_fix", vehicle_id="V1") == 0.0, 30, what="no fix at aggregator")
    wait_for(lambda: status(url) == "unknown", 30, what="status unknown without a fix")
    samples = scrape(url)
    assert sample(samples, "vehicle_geofence_violation", vehicle_id="V1", zone="pond", kind="keep_out") == 1.0
    wait_for(lambda: ("VehicleSilentInGeofenceViolation", "pond") in firing(prom), 60, what="silent-in-violation alert")
    # The fix comes back inside: every geofence alert resolves (the live ones after keep_firing_for).
    move(url, vehicle, 0)
    assert status(url) == "inside"
    wait_for(
        lambda: not any(name == "VehicleSilentInGeofenceViolation" for name, _ in firing(prom)),
        60,
        what="silent alert resolved",
    )
