"""make demo: the fleet table from /metrics text, and a short real run that stops cleanly by itself."""

from __future__ import annotations

import subprocess
import sys

import pytest
from peers import has_binary

from tvm_observability.demo.fleet_demo import fleet_rows, parse_exposition, render

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
def test_demo_runs_a_real_fleet_and_stops_by_itself(ros_env):
    proc = subprocess.run(
        [sys.executable, "-m", "tvm_observability.demo", "--vehicles", "2", "--duration", "8"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=ros_env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "/metrics" in out
    last_table = out.split("fleet at")[-1]
    rows = [line.split() for line in last_table.splitlines() if line.startswith(("V1", "V2"))]
    assert [r[0] for r in rows] == ["V1", "V2"]
    assert all(r[1] != "offline" for r in rows), last_table
    with_prometheus = has_binary("prometheus")
    assert ("prometheus: http://127.0.0.1:" in out) == with_prometheus
    assert f"stopped {5 + with_prometheus} processes, all clean" in out
