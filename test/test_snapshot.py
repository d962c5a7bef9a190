"""SnapshotBuilder: ages, staleness, liveness, diagnostics and error events (pure, clock passed in)."""

from __future__ import annotations

from dataclasses import replace

from tvm_observability import codec
from tvm_observability.aggregator import ingest
from tvm_observability.bridge.converters import DiagnosticEntry
from tvm_observability.bridge.params import default_values, parse_params
from tvm_observability.bridge.snapshot import SensorSpec, SnapshotBuilder, label_safe
from tvm_observability.model import Battery, Pose, Position

LIDAR = SensorSpec("lidar", "scan", "sensor_msgs/msg/LaserScan", 5.0, "lidar")
CAMERA = SensorSpec("camera", "camera/image_raw", "sensor_msgs/msg/Image", 5.0, "camera")
IMU = SensorSpec("imu", "", "", 0.0, "imu")
# The parameters' defaults (bridge.params declares them once), with three sensors and a small code budget.
DEFAULTS = parse_params({**default_values(), "vehicle_id": "V1"}).builder
SETTINGS = replace(DEFAULTS, sensors=(LIDAR, CAMERA, IMU), max_error_codes=4)


def diag(name: str, level: str, code: str | None = None) -> DiagnosticEntry:
    return DiagnosticEntry(name=name, level=level, message=f"{name} {level}", error_code=code)


def feed_rate(builder: SnapshotBuilder, sensor: str, hz: float, start: float, end: float) -> None:
    t = start
    while t < end:
        builder.on_sensor_message(sensor, t)
        t += 1.0 / hz


def test_values_carry_their_age_and_expire_after_their_limit():
    b = SnapshotBuilder(SETTINGS, started=0.0, boot_id="b1")
    b.on_battery(Battery(76.5, 25.0, False, 0.0), 10.0)
    b.on_position(Position(52.5, 13.4, 30.0, True, 0.0), 10.5)
    b.on_pose(Pose(1.0, 2.0, 0.5, 0.8, "odom", 0.0), 10.9)
    b.on_status("on_mission", 10.0)
    snap = b.build(11.0, 1_700_000_000.0)
    assert snap.battery is not None and snap.battery.age_s == 1.0 and snap.battery.percentage == 76.5
    assert snap.position is not None and snap.position.age_s == 0.5
    assert snap.pose is not None and abs(snap.pose.age_s - 0.1) < 1e-9
    assert snap.status == "on_mission"
    assert (snap.seq, snap.boot_id, snap.sent_at) == (1, "b1", 1_700_000_000.0)
    later = b.build(10.9 + SETTINGS.pose_stale_s + 0.1, 0.0)
    assert later.pose is None  # frozen odometry driver: unknown, not a stale number
    assert later.battery is not None  # battery limit is longer
    assert later.status == "on_mission"  # status has no limit by default (published on change)
    assert later.seq == 2
    assert b.stale_inputs(10.9 + SETTINGS.pose_stale_s + 0.1) == ["pose"]


def test_unknown_status_is_reported_as_unknown_and_flagged_once():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    assert b.on_status("dancing", 1.0) is True
    assert b.on_status("dancing", 2.0) is False
    assert b.build(2.0, 0.0).status == "unknown"


def test_missing_inputs_are_unknown():
    snap = SnapshotBuilder(SETTINGS, started=0.0).build(5.0, 0.0)
    assert (snap.battery, snap.position, snap.pose, snap.status) == (None, None, None, None)
    assert {name: r.status for name, r in snap.sensors.items()} == {"lidar": "stale", "camera": "stale", "imu": "stale"}


def test_liveness_rate_and_staleness():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    feed_rate(b, "lidar", 10.0, 0.0, 10.0)
    feed_rate(b, "camera", 2.0, 0.0, 10.0)
    reports = b.sensor_reports(10.0)
    assert reports["lidar"].status == "ok"
    assert reports["lidar"].rate_hz is not None and abs(reports["lidar"].rate_hz - 10.0) <= 0.5
    assert reports["camera"].status == "stale"
    assert "expected >= 5 Hz" in reports["camera"].message
    assert b.sensor_reports(13.0)["lidar"].status == "stale"  # lidar stopped at t=10


def test_diagnostics_combine_with_liveness_worst_wins():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    feed_rate(b, "lidar", 10.0, 0.0, 5.0)
    b.on_diagnostics([diag("lidar: driver", "warn"), diag("imu: driver", "ok")], 4.5)
    reports = b.sensor_reports(5.0)
    assert (reports["lidar"].status, reports["lidar"].message) == ("warn", "lidar: driver warn")
    assert reports["imu"].status == "ok" and reports["imu"].rate_hz is None
    # Diagnostics older than diagnostics_stale_s no longer count: the diagnostics-only imu goes stale.
    assert b.sensor_reports(4.5 + SETTINGS.diagnostics_stale_s + 1)["imu"].status == "stale"


def test_error_events_count_rising_edges_only():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    for t in range(5):  # ERROR held for 5 s = one event
        b.on_diagnostics([diag("camera: driver", "error", "CAM_USB")], float(t))
    assert b.errors == {"CAM_USB": 1}
    b.on_diagnostics([diag("camera: driver", "ok")], 6.0)
    b.on_diagnostics([diag("camera: driver", "error", "CAM_USB")], 7.0)
    b.on_diagnostics([diag("camera: driver", "stale")], 8.0)
    b.on_diagnostics([diag("camera: driver", "error", "CAM_USB")], 9.0)
    assert b.errors == {"CAM_USB": 3}


def test_error_code_fallback_sensor_then_status_name():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    b.on_diagnostics([diag("lidar: motor", "error"), diag("battery monitor: cell 3", "error")], 1.0)
    assert b.errors == {"lidar": 1, "battery_monitor:_cell_3": 1}


def test_error_codes_are_bounded():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    b.on_diagnostics([diag(f"s{i}", "error", f"E{i}") for i in range(10)], 1.0)
    assert b.errors == {"E0": 1, "E1": 1, "E2": 1, "other": 7}


def test_label_safe():
    assert label_safe(" a b!c ") == "a_b_c"
    assert label_safe("!!!") == "unknown"
    assert len(label_safe("x" * 100)) == 64


def test_snapshot_passes_the_aggregators_validation():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    b.on_battery(Battery(None, None, None, 0.0), 1.0)
    b.on_position(Position(None, None, None, False, 0.0), 1.0)
    b.on_diagnostics([diag("lidar: x" * 30, "error")], 1.0)
    snap = b.build(2.0, 1_700_000_000.0)
    assert ingest.parse_snapshot(codec.decode(codec.encode(snap))) == snap


def test_a_driver_repeating_its_last_message_does_not_look_fresh():
    b = SnapshotBuilder(SETTINGS, started=0.0)
    fix = Position(52.5, 13.4, 30.0, True, 0.0)
    b.on_position(fix, 1.0, stamp=100.0)
    for t in (2.0, 3.0, 4.0):
        b.on_position(fix, t, stamp=100.0)  # frozen GPS driver: same header stamp again
    snap = b.build(5.0, 0.0)
    assert snap.position is not None and snap.position.age_s == 4.0
    assert b.build(1.0 + SETTINGS.position_stale_s + 0.1, 0.0).position is None
    b.on_position(fix, 20.0, stamp=101.0)
    assert b.build(20.5, 0.0).position is not None
    b.on_position(fix, 21.0)  # publishers that leave the stamp zero are always taken as new
    assert b.input_ages(21.5)["position"] == 0.5
