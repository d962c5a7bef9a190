"""make demo: the fleet table from /metrics text, and a short real run that stops cleanly by itself."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
from peers import has_binary

from tvm_observability.aggregator.geofence import evaluate, parse_zones
from tvm_observability.demo import fleet_demo
from tvm_observability.demo.fleet_demo import fleet_rows, parse_exposition, render
from tvm_observability.sim.dynamics import local_to_geo

EXPOSITION = """# HELP vehicle_status 1 for the vehicle's current status
# TYPE vehicle_status gauge
vehicle_status{status="idle",vehicle_id="V1"} 0.0
vehicle_status{status="charging",vehicle_id="V1"} 1.0
vehicle_status{status="offline",vehicle_id="V2"} 1.0
vehicle_battery_level{vehicle_id="V1"} 42.25
vehicle_battery_charging{vehicle_id="V1"} 1.0
vehicle_last_heartbeat_seconds_ago{vehicle_id="V1"} 0.4
vehicle_last_heartbeat_seconds_ago{vehicle_id="V2"} +Inf
vehicle_sensor_status{sensor="lidar",status="ok",vehicle_id="V1"} 1.0
vehicle_sensor_status{sensor="camera",status="error",vehicle_id="V1"} 1.0
vehicle_sensor_status{sensor="camera",status="ok",vehicle_id="V1"} 0.0
vehicle_errors_total{error_code="CAM_USB",vehicle_id="V1"} 3.0
vehicles_total 2.0
"""


def test_parse_exposition_reads_labels_and_special_values():
    samples = list(parse_exposition(EXPOSITION))
    assert ("vehicles_total", {}, 2.0) in samples
    assert ("vehicle_last_heartbeat_seconds_ago", {"vehicle_id": "V2"}, float("inf")) in samples


def test_parse_exposition_unescapes_label_values():
    text = (
        '# TYPE vehicle_errors_total counter\nvehicle_errors_total{error_code="A\\"B,C=D\\\\E",vehicle_id="V1"} 2.0\n'
    )
    assert list(parse_exposition(text)) == [
        ("vehicle_errors_total", {"error_code": 'A"B,C=D\\E', "vehicle_id": "V1"}, 2.0)
    ]


def test_fleet_rows():
    rows = fleet_rows(EXPOSITION)
    assert rows == [
        ["V1", "charging", " 42.2% +", " 0.4s", "1 ok camera:error", "CAM_USB=3"],
        ["V2", "offline", "  -  ", "never", "0 ok", "-"],
    ]
    table = render(rows, "header")
    assert table.splitlines()[1].split() == ["vehicle", "status", "battery", "heartbeat", "sensors", "errors"]


@pytest.mark.ros
def test_demo_runs_a_real_fleet_cuts_a_link_and_stops_by_itself(ros_env):
    """The real demo with a short outage: V1's link is cut and restored, and with Prometheus (always under CI) at
    least 90 % of the outage's seconds have samples of V1's battery in Prometheus after the drain."""
    outage_s = 16
    demo = [sys.executable, "-m", "tvm_observability.demo", "--vehicles", "2", "--duration", "8"]
    proc = subprocess.run(
        [*demo, "--outage-after-s", "4", "--outage-s", str(outage_s)],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env=ros_env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "/metrics" in out
    last_table = out.split("fleet at")[-1]
    rows = [line.split() for line in last_table.splitlines() if line.startswith(("V1 ", "V2 "))]
    assert [r[0] for r in rows] == ["V1", "V2"]
    assert all(r[1] != "offline" for r in rows), last_table
    assert f"V1: link cut for {outage_s} s (journal keeps its snapshots)" in out, out
    assert "V1: link back after" in out and "backlog draining" in out, out
    with_prometheus = has_binary("prometheus")
    assert ("prometheus: http://127.0.0.1:" in out) == with_prometheus
    if with_prometheus:
        filled = re.search(r"V1: (\d+) backlog snapshots received; (\d+) of (\d+) s of the outage have samples", out)
        assert filled, out
        received, covered, seconds = map(int, filled.groups())
        assert received >= outage_s - 2 and seconds >= outage_s - 2, out
        assert covered >= 0.9 * seconds, out
    else:
        assert "history is not written (no remote-write target" in out, out
    assert f"stopped {5 + with_prometheus} processes, all clean" in out


def test_outage_vehicle_is_neither_faulty_nor_leaving():
    assert fleet_demo.outage_index(1) is None
    for count in range(2, 8):
        index = fleet_demo.outage_index(count)
        assert index is not None
        assert index not in (fleet_demo.faulty_index(count), fleet_demo.leaving_index(count))


def test_outage_course_cuts_once_online_restores_and_reports_after_the_drain():
    course = fleet_demo.OutageCourse(after_s=15, length_s=30)
    assert course.step(now=1000, elapsed=20, online=False, received=0) is None  # not before the vehicle is up
    assert course.step(now=1002, elapsed=22, online=True, received=0) == "cut"
    assert course.under_way and course.cut_at == 1002
    assert course.step(now=1031, elapsed=51, online=False, received=0) is None
    assert course.step(now=1032, elapsed=52, online=False, received=3) == "restore"
    assert course.restored_at == 1032
    assert course.step(now=1036, elapsed=56, online=True, received=20) is None  # the backlog is arriving
    assert course.step(now=1036 + fleet_demo.DRAIN_QUIET_S - 1, elapsed=0, online=True, received=33) is None
    assert course.step(now=1036 + 2 * fleet_demo.DRAIN_QUIET_S, elapsed=0, online=True, received=33) == "report"
    assert course.drained and course.received - course.at_restore == 30 and not course.under_way


def test_outage_course_reports_at_its_limit_when_no_backlog_arrives():
    course = fleet_demo.OutageCourse(after_s=0, length_s=1)
    assert course.step(now=0, elapsed=0, online=True, received=5) == "cut"
    assert course.step(now=1, elapsed=1, online=True, received=5) == "restore"
    assert course.step(now=1 + fleet_demo.DRAIN_QUIET_S * 2, elapsed=0, online=True, received=5) is None
    assert course.step(now=1 + fleet_demo.DRAIN_LIMIT_S, elapsed=0, online=True, received=5) == "report"
    assert not course.drained


def test_demo_zones_hold_every_route_and_the_leaving_vehicle_leaves():
    """Every demo vehicle's 40 m circle is inside the operating area and clear of the keep-out zone; the
    leaving vehicle is outside once it has drifted its fault distance east."""
    zones = parse_zones(fleet_demo.demo_zones(5))
    for index in range(5):
        lat0, lon0 = fleet_demo.origin(index)
        for step in range(36):
            angle = step * math.pi / 18
            lat, lon = local_to_geo(lat0, lon0, 40 * math.cos(angle), 40 * math.sin(angle))
            assert evaluate(zones, f"V{index + 1}", lon, lat, margin_m=5).status == "inside"
    leaving = fleet_demo.leaving_index(5)
    assert leaving == 4 and fleet_demo.leaving_index(2) is None
    lat, lon = local_to_geo(*fleet_demo.origin(leaving), 40 + float(fleet_demo._LEAVES["fault_leave_area_m"]), 0)
    assert evaluate(zones, "V5", lon, lat, margin_m=5).status == "outside_operating_area"
