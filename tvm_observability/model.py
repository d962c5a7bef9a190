"""The telemetry snapshot a vehicle sends once per period: plain frozen values, no ROS, no I/O.

Field names and meanings are the wire schema v1 of docs/telemetry-protocol.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

SCHEMA_VERSION = 1

VEHICLE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""Vehicle ids: what may appear in the vehicle_id label."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
"""Sensor names and error codes: what may appear in the sensor and error_code labels."""

SENSOR_STATUSES: tuple[str, ...] = ("ok", "warn", "error", "stale")
"""Every status a sensor can have, best first."""

DEFAULT_VEHICLE_STATUSES: tuple[str, ...] = (
    "idle",
    "on_mission",
    "charging",
    "docked",
    "paused",
    "emergency_stop",
    "error",
    "maintenance",
)
"""Statuses a vehicle may report by default (configurable on both ends)."""

UNKNOWN_STATUS = "unknown"
"""Exported when a vehicle reports no status or one outside the configured set."""

OFFLINE_STATUS = "offline"
"""Exported by the aggregator when a vehicle's heartbeat is older than offline_after_s."""

OVERFLOW_ERROR_CODE = "other"
"""The error code under which events are counted once a vehicle's error-code budget is used up (by the bridge
for codes beyond its per-boot budget, by the aggregator for codes beyond a vehicle's series budget)."""

TELEMETRY_PATH = "/api/v1/telemetry"
"""Where a vehicle POSTs its snapshots (docs/telemetry-protocol.md)."""

HISTORY_PATH = "/api/v1/telemetry/history"
"""Where a vehicle POSTs its backlog: snapshots journalled during an outage (docs/telemetry-protocol.md)."""

ROUTING_HEADER = "X-Vehicle-Id"
"""Carried by every POST so that a load balancer can route on the vehicle without decoding the body
(docs/decisions/0001-routing-key.md)."""

MAX_MESSAGE_CHARS = 256
"""Longest sensor message kept (longer ones are rejected on ingest, truncated by the bridge)."""

EVENT_LEVELS: tuple[str, ...] = ("WARN", "ERROR", "FATAL")
"""Levels a vehicle event may carry (the JSON logs' `level`)."""

EVENT_SOURCES: tuple[str, ...] = ("diagnostic", "rosout")
"""Where a vehicle event was captured: a diagnostic status entering ERROR, or a /rosout log entry."""

MAX_EVENT_MESSAGE_CHARS = 1024
"""Longest event message (longer ones are rejected on ingest, truncated by the bridge)."""

MAX_EVENT_TEXT_CHARS = 256
"""Longest component, file, function, key and value of an event."""

MAX_EVENT_KEY_VALUES = 16
"""Key-value pairs per event (a diagnostic status's `values`)."""


@dataclass(frozen=True, slots=True)
class VehicleEvent:
    """One error event captured on the vehicle (docs/decisions/0004): its id is
    `<vehicle_id>:<boot_id>:<event_seq>` (decision 0003), `stamp` its time on the vehicle's clock."""

    event_seq: int
    """+1 per event within a boot, from 1, never reused."""
    stamp: float
    level: str
    source: str
    component: str
    """The logging node (`/rosout`) or the diagnostic status name."""
    message: str
    code: str | None = None
    key_values: tuple[tuple[str, str], ...] = ()
    file: str | None = None
    function: str | None = None
    line: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "event_seq": self.event_seq,
            "stamp": self.stamp,
            "level": self.level,
            "source": self.source,
            "component": self.component,
            "message": self.message,
        }
        if self.code is not None:
            wire["code"] = self.code
        if self.key_values:
            wire["key_values"] = [[k, v] for k, v in self.key_values]
        for name in ("file", "function", "line"):
            if getattr(self, name) is not None:
                wire[name] = getattr(self, name)
        return wire


def event_id(vehicle_id: str, boot_id: str, event_seq: int) -> str:
    """The deterministic id of an event (decision 0003): the same on every retry."""
    return f"{vehicle_id}:{boot_id}:{event_seq}"


@dataclass(frozen=True, slots=True)
class Battery:
    """Battery state; None where the source does not know (ROS NaN)."""

    percentage: float | None
    voltage: float | None
    charging: bool | None
    age_s: float


@dataclass(frozen=True, slots=True)
class Position:
    """GNSS position; without a fix the coordinates are None."""

    latitude: float | None
    longitude: float | None
    altitude: float | None
    fix: bool
    age_s: float
    accuracy_m: float | None = None
    """Horizontal accuracy in meters (root of the east and north variances), None where not reported."""


@dataclass(frozen=True, slots=True)
class Pose:
    """Odometry pose in frame_id, yaw in radians, speed in m/s."""

    x: float
    y: float
    yaw: float
    speed: float
    frame_id: str
    age_s: float


@dataclass(frozen=True, slots=True)
class SensorReport:
    """One sensor's combined status (diagnostics and message-rate liveness)."""

    status: str
    rate_hz: float | None = None
    message: str = ""


LINK_COUNTERS: tuple[str, ...] = ("failed_attempts_total", "outages_total", "outage_seconds_total")
"""The cumulative-per-boot fields of a LinkReport (the aggregator sums them over boots like `errors`)."""


@dataclass(frozen=True, slots=True)
class LinkOutage:
    """One outage of the vehicle's link to the aggregator: times on the vehicle's clock, positions the last known
    fix at each edge (None: no fix known then)."""

    started_at: float
    """Unix time of the first failed push after an accepted one (or after the start)."""
    ended_at: float | None
    """Unix time of the first accepted push after it; None while the outage lasts."""
    start_lat: float | None = None
    start_lon: float | None = None
    end_lat: float | None = None
    end_lon: float | None = None


@dataclass(frozen=True, slots=True)
class LinkReport:
    """The vehicle's own view of its link (optional, added in 0.2.0). Counts are cumulative for the boot."""

    failed_attempts_total: int
    """Pushes that failed (no answer, timeout, refusal)."""
    outages_total: int
    """Outages begun (an ongoing one included)."""
    outage_seconds_total: float
    """Time spent in outages, the ongoing one up to the snapshot."""
    rtt_s: float | None = None
    """Round-trip time of the last accepted push; None before the first."""
    last_outage: LinkOutage | None = None
    """The ongoing outage, else the last one; None before the first."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "failed_attempts_total": self.failed_attempts_total,
            "outages_total": self.outages_total,
            "outage_seconds_total": self.outage_seconds_total,
            "rtt_s": self.rtt_s,
            "last_outage": None if self.last_outage is None else _fields(self.last_outage),
        }


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class VehicleSnapshot:
    """Everything one push carries.

    `errors` holds, per error code, the number of error events since this `boot_id`
    started: cumulative, so a lost or repeated push never loses or doubles an event.
    """

    vehicle_id: str
    boot_id: str
    seq: int
    sent_at: float
    status: str | None = None
    battery: Battery | None = None
    position: Position | None = None
    pose: Pose | None = None
    sensors: Mapping[str, SensorReport] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    events: tuple[VehicleEvent, ...] = ()
    """Error events captured since the previous push (optional, added in 0.2.0; absent on the wire when none)."""
    link: LinkReport | None = None
    """The vehicle's view of its link (optional, added in 0.2.0; absent on the wire when not reported)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensors", _frozen(self.sensors))
        object.__setattr__(self, "errors", _frozen(self.errors))

    def to_wire(self) -> dict[str, Any]:
        """The schema-v1 map (plain dicts, lists and scalars) for the codec."""
        return {
            "v": SCHEMA_VERSION,
            "vehicle_id": self.vehicle_id,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "sent_at": self.sent_at,
            "status": self.status,
            "battery": None if self.battery is None else _fields(self.battery),
            "position": None if self.position is None else _fields(self.position),
            "pose": None if self.pose is None else _fields(self.pose),
            "sensors": {name: _fields(report) for name, report in self.sensors.items()},
            "errors": dict(self.errors),
            **({"events": [event.to_wire() for event in self.events]} if self.events else {}),
            **({"link": self.link.to_wire()} if self.link is not None else {}),
        }


def _fields(value: Battery | Position | Pose | SensorReport | LinkOutage) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}
