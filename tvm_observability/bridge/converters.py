"""ROS messages -> plain model values. The only module that reads ROS message fields.

Every function is pure: it takes a message object (or any object with the same fields) and
returns values of `model`, with None wherever ROS says "unknown" (NaN, no fix, out of range).
No rclpy import: message classes are duck-typed, so these functions run wherever the
message packages import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..model import MAX_EVENT_KEY_VALUES, MAX_MESSAGE_CHARS, Battery, Pose, Position

# sensor_msgs/BatteryState power_supply_status values.
POWER_SUPPLY_STATUS_CHARGING = 1
POWER_SUPPLY_STATUS_DISCHARGING = 2
POWER_SUPPLY_STATUS_NOT_CHARGING = 3
POWER_SUPPLY_STATUS_FULL = 4

# diagnostic_msgs/DiagnosticStatus levels (bytes in ROS 2 Python messages).
DIAG_OK = 0
DIAG_WARN = 1
DIAG_ERROR = 2
DIAG_STALE = 3

_DIAG_LEVEL_NAMES = {DIAG_OK: "ok", DIAG_WARN: "warn", DIAG_ERROR: "error", DIAG_STALE: "stale"}
FRAME_ID_MAX = 64
ERROR_CODE_KEY = "error_code"


def _finite(value: Any, low: float = -math.inf, high: float = math.inf) -> float | None:
    """A float inside [low, high], or None for NaN, infinities and anything out of range."""
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        return None
    return number


def battery_from_msg(msg: Any, age_s: float = 0.0) -> Battery:
    """sensor_msgs/BatteryState -> Battery (percentage 0-100, None when unknown).

    ROS gives `percentage` as 0-1; a NaN or out-of-range value falls back to charge/capacity
    (both in Ah), and with neither the percentage is unknown.
    """
    fraction = _finite(msg.percentage, 0.0, 1.0)
    if fraction is None:
        charge = _finite(msg.charge, 0.0)
        capacity = _finite(msg.capacity, 0.0)
        if charge is not None and capacity:
            fraction = min(charge / capacity, 1.0)
    status = int(msg.power_supply_status)
    charging: bool | None = None
    if status == POWER_SUPPLY_STATUS_CHARGING:
        charging = True
    elif status in (POWER_SUPPLY_STATUS_DISCHARGING, POWER_SUPPLY_STATUS_NOT_CHARGING, POWER_SUPPLY_STATUS_FULL):
        charging = False
    return Battery(
        percentage=None if fraction is None else fraction * 100.0,
        voltage=_finite(msg.voltage, 0.0, 1000.0),
        charging=charging,
        age_s=age_s,
    )


def position_from_msg(msg: Any, age_s: float = 0.0) -> Position:
    """sensor_msgs/NavSatFix -> Position; `status.status < 0` (no fix) or NaN coordinates -> unknown."""
    latitude = _finite(msg.latitude, -90.0, 90.0)
    longitude = _finite(msg.longitude, -180.0, 180.0)
    if int(msg.status.status) < 0 or latitude is None or longitude is None:
        return Position(latitude=None, longitude=None, altitude=None, fix=False, age_s=age_s)
    return Position(
        latitude=latitude,
        longitude=longitude,
        altitude=_finite(msg.altitude, -1e5, 1e6),
        fix=True,
        age_s=age_s,
        accuracy_m=horizontal_accuracy(msg),
    )


COVARIANCE_TYPE_UNKNOWN = 0
"""NavSatFix.COVARIANCE_TYPE_UNKNOWN: position_covariance carries nothing."""


def horizontal_accuracy(msg: Any) -> float | None:
    """NavSatFix position_covariance (ENU, m²) -> horizontal accuracy in meters: the root of the east and north
    variances (DRMS); None when the covariance type is unknown or the values are not finite and non-negative."""
    if int(msg.position_covariance_type) == COVARIANCE_TYPE_UNKNOWN:
        return None
    east, north = _finite(msg.position_covariance[0], 0.0, 1e12), _finite(msg.position_covariance[4], 0.0, 1e12)
    if east is None or north is None:
        return None
    return math.sqrt(east + north)


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Heading (rotation about z) in radians, in [-pi, pi]."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def pose_from_msg(msg: Any, age_s: float = 0.0) -> Pose | None:
    """nav_msgs/Odometry -> Pose (x, y, yaw, planar+vertical speed, frame); None if any value is not finite."""
    position = msg.pose.pose.position
    q = msg.pose.pose.orientation
    linear = msg.twist.twist.linear
    values = [_finite(v, -1e9, 1e9) for v in (position.x, position.y, q.x, q.y, q.z, q.w, linear.x, linear.y, linear.z)]
    if any(v is None for v in values):
        return None
    x, y, qx, qy, qz, qw, vx, vy, vz = (float(v) for v in values)  # type: ignore[arg-type]
    speed = math.sqrt(vx * vx + vy * vy + vz * vz)
    if speed > 1e3:
        return None
    return Pose(
        x=x,
        y=y,
        yaw=yaw_from_quaternion(qx, qy, qz, qw),
        speed=speed,
        frame_id=str(msg.header.frame_id)[:FRAME_ID_MAX],
        age_s=age_s,
    )


def stamp_of(msg: Any) -> float | None:
    """The message's header stamp in seconds, or None when the publisher leaves it zero."""
    stamp = msg.header.stamp
    seconds = int(stamp.sec) + int(stamp.nanosec) * 1e-9
    return seconds if seconds > 0 else None


def status_from_msg(msg: Any) -> str:
    """std_msgs/String -> the raw status text, whitespace stripped (checked against the set by the caller)."""
    return str(msg.data).strip()


@dataclass(frozen=True, slots=True)
class DiagnosticEntry:
    """One diagnostic_msgs/DiagnosticStatus, reduced to what the bridge uses."""

    name: str
    level: str
    """ok, warn, error or stale (unknown levels read as error: a driver that invents levels is broken)."""
    message: str
    error_code: str | None
    values: tuple[tuple[str, str], ...] = ()
    """The status's key-values (at most MAX_EVENT_KEY_VALUES), for the error event it may become."""


def diagnostics_from_msg(msg: Any) -> list[DiagnosticEntry]:
    """diagnostic_msgs/DiagnosticArray -> one entry per status."""
    entries: list[DiagnosticEntry] = []
    for status in msg.status:
        level = status.level
        level_int = level[0] if isinstance(level, bytes | bytearray) else int(level)
        code = next((str(kv.value) for kv in status.values if kv.key == ERROR_CODE_KEY and str(kv.value)), None)
        entries.append(
            DiagnosticEntry(
                name=str(status.name),
                level=_DIAG_LEVEL_NAMES.get(level_int, "error"),
                message=str(status.message)[:MAX_MESSAGE_CHARS],
                error_code=code,
                values=tuple((str(kv.key), str(kv.value)) for kv in status.values[:MAX_EVENT_KEY_VALUES]),
            )
        )
    return entries


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One rcl_interfaces/Log message (a /rosout entry), reduced to what an error event carries."""

    stamp: float
    level: int
    """10 DEBUG, 20 INFO, 30 WARN, 40 ERROR, 50 FATAL."""
    name: str
    """The logger: the node's namespace and name with dots (`v5.planner`)."""
    message: str
    file: str
    function: str
    line: int


def log_entry_from_msg(msg: Any) -> LogEntry:
    """rcl_interfaces/Log -> LogEntry (the full message: the event capture truncates)."""
    level = msg.level
    return LogEntry(
        stamp=int(msg.stamp.sec) + int(msg.stamp.nanosec) * 1e-9,
        level=level[0] if isinstance(level, bytes | bytearray) else int(level),
        name=str(msg.name),
        message=str(msg.msg),
        file=str(msg.file),
        function=str(msg.function),
        line=int(msg.line),
    )


_CDR_ENCAPSULATIONS = frozenset({b"\x00\x00", b"\x00\x01", b"\x00\x06", b"\x00\x07", b"\x00\x08", b"\x00\x09"})
"""Encapsulation ids of (X)CDR, big and little endian, plain, delimited and parameter-list forms, as the RMWs write
them in the first two bytes of a serialized message."""
_LOG_LEVEL_OFFSET = 12
"""rcl_interfaces/msg/Log serialized: 4 bytes of encapsulation header, the stamp (int32 sec, uint32 nanosec), then
the uint8 level: at this byte in every (X)CDR form (nothing before it needs padding)."""


def serialized_log_level(raw: bytes) -> int | None:
    """The level of a serialized rcl_interfaces/msg/Log, read without deserializing it (a chatty robot's INFO lines
    are dropped for the price of a byte); None when the encoding is not one this knows (deserialize to tell)."""
    if len(raw) <= _LOG_LEVEL_OFFSET or raw[:2] not in _CDR_ENCAPSULATIONS:
        return None
    return raw[_LOG_LEVEL_OFFSET]
