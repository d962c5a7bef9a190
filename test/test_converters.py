"""Converters with real ROS message objects (no node, no spinning)."""

from __future__ import annotations

import math

import pytest
from peers import ROS_INSTALL, require_module

sensor_msgs = require_module("sensor_msgs.msg", ROS_INSTALL)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from tvm_observability.bridge import converters  # noqa: E402

pytestmark = pytest.mark.ros
BatteryState = sensor_msgs.BatteryState
NavSatFix = sensor_msgs.NavSatFix
NavSatStatus = sensor_msgs.NavSatStatus


def battery(**fields):
    msg = BatteryState()
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def test_battery_percentage_is_scaled_to_percent():
    b = converters.battery_from_msg(
        battery(percentage=0.765, voltage=25.2, power_supply_status=BatteryState.POWER_SUPPLY_STATUS_DISCHARGING)
    )
    assert b.percentage == pytest.approx(76.5, abs=1e-4)
    assert b.voltage == pytest.approx(25.2, abs=1e-4)
    assert b.charging is False


def test_battery_falls_back_to_charge_over_capacity():
    b = converters.battery_from_msg(battery(percentage=math.nan, charge=30.0, capacity=40.0))
    assert b.percentage == pytest.approx(75.0)


def test_battery_nan_everywhere_is_unknown_never_a_number():
    b = converters.battery_from_msg(battery(percentage=math.nan, charge=math.nan, capacity=math.nan, voltage=math.nan))
    assert b.percentage is None
    assert b.voltage is None
    assert b.charging is None  # POWER_SUPPLY_STATUS_UNKNOWN


def test_battery_out_of_range_fraction_is_not_trusted():
    # A driver publishing 76 (percent) instead of 0.76 breaks the ROS contract: unknown, not 7600 %.
    assert converters.battery_from_msg(battery(percentage=76.0)).percentage is None
    assert converters.battery_from_msg(battery(percentage=-0.1, charge=math.nan)).percentage is None


def test_battery_charging_from_power_supply_status():
    charging = converters.battery_from_msg(battery(power_supply_status=BatteryState.POWER_SUPPLY_STATUS_CHARGING))
    full = converters.battery_from_msg(battery(power_supply_status=BatteryState.POWER_SUPPLY_STATUS_FULL))
    assert charging.charging is True
    assert full.charging is False


def fix(status: int, lat=52.52, lon=13.405, alt=34.0):
    msg = NavSatFix()
    msg.status.status = status
    msg.latitude, msg.longitude, msg.altitude = lat, lon, alt
    return msg


def test_position_with_fix():
    p = converters.position_from_msg(fix(NavSatStatus.STATUS_FIX))
    assert p.fix is True
    assert p.latitude == pytest.approx(52.52)
    assert p.longitude == pytest.approx(13.405)
    assert p.altitude == pytest.approx(34.0)


def test_position_without_fix_is_unknown():
    p = converters.position_from_msg(fix(NavSatStatus.STATUS_NO_FIX))
    assert (p.fix, p.latitude, p.longitude, p.altitude) == (False, None, None, None)


def test_position_nan_coordinates_are_no_fix_and_nan_altitude_is_unknown():
    assert converters.position_from_msg(fix(NavSatStatus.STATUS_FIX, lat=math.nan)).fix is False
    assert converters.position_from_msg(fix(NavSatStatus.STATUS_GBAS_FIX, alt=math.nan)).altitude is None


def test_position_accuracy_from_the_covariance_when_known():
    msg = fix(NavSatStatus.STATUS_FIX)
    assert converters.position_from_msg(msg).accuracy_m is None  # COVARIANCE_TYPE_UNKNOWN
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
    msg.position_covariance = [9.0, 0.0, 0.0, 0.0, 16.0, 0.0, 0.0, 0.0, 100.0]
    assert converters.position_from_msg(msg).accuracy_m == pytest.approx(5.0)
    msg.position_covariance = [math.nan, 0.0, 0.0, 0.0, 16.0, 0.0, 0.0, 0.0, 100.0]
    assert converters.position_from_msg(msg).accuracy_m is None


def odometry(yaw: float, vx: float, vy: float, frame: str = "odom"):
    msg = Odometry()
    msg.header.frame_id = frame
    msg.pose.pose.position.x = 12.5
    msg.pose.pose.position.y = -3.0
    msg.pose.pose.orientation.z = math.sin(yaw / 2)
    msg.pose.pose.orientation.w = math.cos(yaw / 2)
    msg.twist.twist.linear.x = vx
    msg.twist.twist.linear.y = vy
    return msg


@pytest.mark.parametrize("yaw", [0.0, 1.2, -2.5, math.pi - 1e-6])
def test_pose_yaw_from_quaternion(yaw):
    pose = converters.pose_from_msg(odometry(yaw, 0.3, 0.4))
    assert pose is not None
    assert pose.yaw == pytest.approx(yaw, abs=1e-9)
    assert pose.speed == pytest.approx(0.5)
    assert (pose.x, pose.y, pose.frame_id) == (12.5, -3.0, "odom")


def test_pose_with_nan_is_unknown():
    msg = odometry(0.0, math.nan, 0.0)
    assert converters.pose_from_msg(msg) is None


def test_status_text_is_stripped():
    assert converters.status_from_msg(String(data=" on_mission\n")) == "on_mission"


def test_diagnostics_levels_and_error_code():
    array = DiagnosticArray()
    array.status = [
        DiagnosticStatus(level=DiagnosticStatus.OK, name="lidar: driver", message="fine"),
        DiagnosticStatus(
            level=DiagnosticStatus.ERROR,
            name="camera: driver",
            message="usb reset",
            values=[KeyValue(key="temperature", value="40"), KeyValue(key="error_code", value="CAM_USB")],
        ),
        DiagnosticStatus(level=DiagnosticStatus.STALE, name="imu: driver"),
        DiagnosticStatus(level=DiagnosticStatus.WARN, name="gps: driver", message="x" * 1000),
    ]
    entries = converters.diagnostics_from_msg(array)
    assert [(e.name, e.level, e.error_code) for e in entries] == [
        ("lidar: driver", "ok", None),
        ("camera: driver", "error", "CAM_USB"),
        ("imu: driver", "stale", None),
        ("gps: driver", "warn", None),
    ]
    assert len(entries[3].message) == 256


def test_stamp_of():
    msg = NavSatFix()
    assert converters.stamp_of(msg) is None
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 500_000_000
    assert converters.stamp_of(msg) == pytest.approx(1_700_000_000.5)


@pytest.mark.parametrize("level", [10, 20, 30, 40, 50, 0, 255])
@pytest.mark.parametrize("text", ["", "x", "é" * 300])
def test_the_level_byte_of_a_serialized_log_is_its_level(level: int, text: str) -> None:
    """The bridge drops /rosout entries below its level without deserializing them: the byte it reads must be the
    level of what the RMW serializes, whatever the stamp, names and text around it."""
    from rcl_interfaces.msg import Log
    from rclpy.serialization import deserialize_message, serialize_message

    msg = Log(level=level, name=f"v1.{text[:20]}", msg=text, file=text, function="f", line=7)
    msg.stamp.sec, msg.stamp.nanosec = 1_800_000_000, 999_999_999
    raw = serialize_message(msg)
    assert converters.serialized_log_level(raw) == level
    assert deserialize_message(raw, Log).level == level


def test_an_unknown_encapsulation_is_left_to_deserialization() -> None:
    assert converters.serialized_log_level(b"\x12\x34" + bytes(20)) is None
    assert converters.serialized_log_level(b"\x00\x01\x00\x00") is None  # too short to hold a level
