"""The fleet collector: golden exposition files with a frozen clock, plus targeted sample checks.

Regenerate the golden files after an intended change with:
    UPDATE_GOLDEN=1 .venv/bin/pytest test/test_collector.py
and review the diff: every changed line is a change to what Prometheus sees. A run that rewrites a file
fails (it compared nothing); the next run without UPDATE_GOLDEN is the check.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
from peers import in_ci, require_binary
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from support import FakeClock, parse_metrics, wire_snapshot

from tvm_observability.aggregator.collector import FleetCollector
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import parse_snapshot

GOLDEN = Path(__file__).parent / "golden"


def fixture_fleet() -> tuple[FleetState, CollectorRegistry, FakeClock]:
    """V1 online with everything; V2 on the roster, never heard from; V3 dead for a minute; X9 unknown, no fix."""
    clock = FakeClock(wall=1_800_000_000.0)
    fleet = FleetState(("V1", "V2", "V3"), FleetSettings(offline_after_s=15), clock=clock)
    v3_link = {  # an outage in progress since before its only push, no fix known then
        "failed_attempts_total": 2,
        "outages_total": 1,
        "outage_seconds_total": 3.0,
        "last_outage": {"started_at": 1_799_999_997.5, "ended_at": None},
    }
    fleet.apply(parse_snapshot(wire_snapshot("V3", sent_at=1_800_000_000.5, errors={"E_MOTOR": 2}, link=v3_link)))
    clock.advance(60)
    fleet.apply(
        parse_snapshot(
            wire_snapshot(
                "V1",
                sent_at=clock.time() - 0.25,
                status="on_mission",
                sensors={
                    "lidar": {"status": "ok", "rate_hz": 10.0, "message": ""},
                    "camera": {"status": "error", "rate_hz": 14.5, "message": 'lens "fogged"\nretrying'},
                    "gps": {"status": "stale", "rate_hz": None, "message": "no fix for 30 s"},
                },
                errors={"E_LIDAR_TIMEOUT": 3, "diag:camera": 1},
                link={
                    "failed_attempts_total": 5,
                    "outages_total": 1,
                    "outage_seconds_total": 42.5,
                    "rtt_s": 0.125,
                    "last_outage": {
                        "started_at": 1_800_000_010.0,
                        "ended_at": 1_800_000_052.5,
                        "start_lat": 52.51,
                        "start_lon": 13.39,
                        "end_lat": 52.52,
                        "end_lon": 13.405,
                    },
                },
            )
        )
    )
    fleet.apply(
        parse_snapshot(
            wire_snapshot(
                "X9",
                sent_at=clock.time() + 3600.0,
                status=None,
                battery={"percentage": None, "voltage": None, "charging": None, "age_s": 0.0},
                position={"latitude": None, "longitude": None, "altitude": None, "fix": False, "age_s": 12.0},
                pose=None,
                sensors={},
            )
        )
    )
    clock.advance(2.5)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    return fleet, registry, clock


def _check_golden(name: str, rendered: bytes) -> None:
    path = GOLDEN / name
    golden = path.read_bytes()
    if rendered != golden and os.environ.get("UPDATE_GOLDEN"):
        assert not in_ci(), "UPDATE_GOLDEN is for a developer's machine, never for CI"
        path.write_bytes(rendered)
        pytest.fail(f"rewrote {path}: review `git diff {path}`, then run again without UPDATE_GOLDEN")
    assert rendered == golden, f"exposition differs from {path}; see this module's docstring"


def test_text_exposition_matches_golden() -> None:
    _, registry, _ = fixture_fleet()
    _check_golden("fleet.prom", generate_latest(registry))


def test_openmetrics_exposition_matches_golden() -> None:
    _, registry, _ = fixture_fleet()
    _check_golden("fleet.openmetrics", generate_openmetrics(registry))


def test_sample_values() -> None:
    _, registry, _ = fixture_fleet()
    value = registry.get_sample_value
    assert value("vehicle_status", {"vehicle_id": "V1", "status": "on_mission"}) == 1
    assert value("vehicle_status", {"vehicle_id": "V1", "status": "offline"}) == 0
    assert value("vehicle_up", {"vehicle_id": "V1"}) == 1
    assert value("vehicle_last_heartbeat_seconds_ago", {"vehicle_id": "V1"}) == pytest.approx(2.5)
    assert value("vehicle_battery_level", {"vehicle_id": "V1"}) == 76.5
    assert value("vehicle_latitude", {"vehicle_id": "V1"}) == 52.52
    assert value("vehicle_sensor_status", {"vehicle_id": "V1", "sensor": "camera", "status": "error"}) == 1
    assert value("vehicle_sensor_status", {"vehicle_id": "V1", "sensor": "camera", "status": "ok"}) == 0
    assert value("vehicle_errors_total", {"vehicle_id": "V1", "error_code": "E_LIDAR_TIMEOUT"}) == 3
    # never heard from: present, offline, heartbeat +Inf, no values
    assert value("vehicle_status", {"vehicle_id": "V2", "status": "offline"}) == 1
    assert value("vehicle_last_heartbeat_seconds_ago", {"vehicle_id": "V2"}) == math.inf
    assert value("vehicle_battery_level", {"vehicle_id": "V2"}) is None
    assert value("vehicle_last_heartbeat_timestamp_seconds", {"vehicle_id": "V2"}) is None
    # dead for a minute: offline, last values kept, counters kept
    assert value("vehicle_status", {"vehicle_id": "V3", "status": "offline"}) == 1
    assert value("vehicle_status", {"vehicle_id": "V3", "status": "idle"}) == 0
    assert value("vehicle_last_heartbeat_seconds_ago", {"vehicle_id": "V3"}) == pytest.approx(62.5)
    assert value("vehicle_errors_total", {"vehicle_id": "V3", "error_code": "E_MOTOR"}) == 2
    assert value("vehicle_latitude", {"vehicle_id": "V3"}) == 52.52
    # unknown values are absent, never NaN; no fix means no coordinates
    assert value("vehicle_battery_level", {"vehicle_id": "X9"}) is None
    assert value("vehicle_gps_fix", {"vehicle_id": "X9"}) == 0
    assert value("vehicle_latitude", {"vehicle_id": "X9"}) is None
    assert value("vehicle_status", {"vehicle_id": "X9", "status": "unknown"}) == 1
    assert value("vehicle_clock_skew_seconds", {"vehicle_id": "X9"}) == pytest.approx(3600.0)
    assert value("vehicle_on_roster", {"vehicle_id": "X9"}) == 0
    assert value("vehicles_online") == 2
    assert value("vehicles_total") == 4


def test_exactly_one_status_per_vehicle_and_no_nan() -> None:
    _, registry, _ = fixture_fleet()
    samples = parse_metrics(generate_latest(registry).decode())
    for vid in ("V1", "V2", "V3", "X9"):
        ones = [k for k, v in samples.items() if k[0] == "vehicle_status" and ("vehicle_id", vid) in k[1] and v == 1]
        assert len(ones) == 1, vid
    assert not any(math.isnan(v) for v in samples.values())


def test_heartbeat_age_is_computed_at_scrape_time() -> None:
    _, registry, clock = fixture_fleet()
    clock.advance(13.0)
    assert registry.get_sample_value("vehicle_last_heartbeat_seconds_ago", {"vehicle_id": "V1"}) == pytest.approx(15.5)
    assert registry.get_sample_value("vehicle_up", {"vehicle_id": "V1"}) == 0
    assert registry.get_sample_value("vehicle_status", {"vehicle_id": "V1", "status": "offline"}) == 1
    assert registry.get_sample_value("vehicles_online") == 0


@pytest.mark.peer
def test_promtool_accepts_the_exposition() -> None:
    promtool = require_binary("promtool")
    _, registry, _ = fixture_fleet()
    result = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=generate_latest(registry), capture_output=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", result
