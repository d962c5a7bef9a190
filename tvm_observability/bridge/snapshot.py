"""The vehicle's latest inputs -> one VehicleSnapshot per period. Pure: times are passed in.

`SnapshotBuilder` keeps the latest converted value of each input with its receive time,
counts sensor messages for liveness, turns diagnostics into per-sensor statuses and error
events, and builds the snapshot with every value's age. The bridge node feeds it from ROS
callbacks; tests feed it directly.

Error events: a diagnostic status counts once each time it *enters* ERROR (rising edge; a
status first seen in ERROR counts too), under the code of its `error_code` key-value when
present, else (fallback) the name of the sensor it maps to, else its own status name, made
label-safe. Counts are cumulative for this builder's boot_id and never reset.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from dataclasses import dataclass, replace

from ..model import (
    MAX_MESSAGE_CHARS,
    OVERFLOW_ERROR_CODE,
    SENSOR_STATUSES,
    UNKNOWN_STATUS,
    Battery,
    LinkReport,
    Pose,
    Position,
    SensorReport,
    VehicleEvent,
    VehicleSnapshot,
)
from .converters import DiagnosticEntry

_MAX_TRACKED_DIAGNOSTICS = 512
_MAX_UNKNOWN_STATUSES_REMEMBERED = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]+")


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """A sensor to watch: message-rate liveness on `topic` (if set) and diagnostics named `diagnostic_prefix*`.

    No defaults here: bridge.params declares them (SENSOR_FIELDS) and builds every SensorSpec."""

    name: str
    topic: str
    message_type: str
    min_rate_hz: float
    diagnostic_prefix: str


@dataclass(frozen=True, slots=True)
class BuilderSettings:
    """Everything the builder needs to know besides the inputs. No defaults here: each field's default and
    meaning is the parameter of the same name in bridge.params (PARAMETERS), which validates and builds this."""

    vehicle_id: str
    statuses: tuple[str, ...]
    sensors: tuple[SensorSpec, ...]
    battery_stale_s: float
    position_stale_s: float
    pose_stale_s: float
    status_stale_s: float
    diagnostics_stale_s: float
    liveness_window_s: float
    max_error_codes: int


def label_safe(text: str) -> str:
    """`text` reduced to the characters an error_code or sensor label may hold (model.NAME_PATTERN)."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip("_")[:64]
    return cleaned or "unknown"


def new_boot_id() -> str:
    """A fresh random boot id (one per bridge start)."""
    return uuid.uuid4().hex


class RateMeter:
    """Message arrivals within a sliding window."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float, window_s: float) -> float:
        """Messages per second over the last `window_s` seconds."""
        times = self._times
        while times and times[0] <= now - window_s:
            times.popleft()
        return len(times) / window_s

    def count(self) -> int:
        return len(self._times)


@dataclass(slots=True)
class _Stamped:
    value: Battery | Position | Pose | str
    received: float
    stamp: float | None = None


class SnapshotBuilder:
    """Latest value per input plus cumulative error counts for one boot."""

    def __init__(self, settings: BuilderSettings, *, started: float, boot_id: str | None = None) -> None:
        self.settings = settings
        self.boot_id = boot_id or new_boot_id()
        self.seq = 0
        self._started = started
        self._inputs: dict[str, _Stamped] = {}
        self._meters = {s.name: RateMeter() for s in settings.sensors if s.topic}
        self._diagnostics: dict[str, tuple[DiagnosticEntry, float]] = {}
        self._in_error: set[str] = set()
        self._errors: dict[str, int] = {}
        self._unknown_statuses: set[str] = set()

    # Inputs -------------------------------------------------------------------------------

    def on_battery(self, battery: Battery, now: float, stamp: float | None = None) -> None:
        self._store("battery", battery, now, stamp)

    def on_position(self, position: Position, now: float, stamp: float | None = None) -> None:
        self._store("position", position, now, stamp)

    def on_pose(self, pose: Pose | None, now: float, stamp: float | None = None) -> None:
        if pose is None:
            self._inputs.pop("pose", None)
        else:
            self._store("pose", pose, now, stamp)

    def _store(self, name: str, value: Battery | Position | Pose, now: float, stamp: float | None) -> None:
        """Keep the newest value. A message repeating the previous header stamp is a hung driver
        re-sending its last reading: it does not make the value younger."""
        previous = self._inputs.get(name)
        if stamp is not None and previous is not None and previous.stamp == stamp:
            return
        self._inputs[name] = _Stamped(value, now, stamp)

    def on_status(self, text: str, now: float) -> bool:
        """Record the vehicle status; True the first time an unknown status is seen (log it once)."""
        if text in self.settings.statuses:
            self._inputs["status"] = _Stamped(text, now)
            return False
        self._inputs["status"] = _Stamped(UNKNOWN_STATUS, now)
        if text in self._unknown_statuses or len(self._unknown_statuses) >= _MAX_UNKNOWN_STATUSES_REMEMBERED:
            return False
        self._unknown_statuses.add(text)
        return True

    def on_sensor_message(self, sensor: str, now: float) -> None:
        self._meters[sensor].add(now)

    def on_diagnostics(self, entries: list[DiagnosticEntry], now: float) -> list[tuple[DiagnosticEntry, str]]:
        """Keep the latest status per name and count ERROR rising edges; the statuses that entered ERROR, each
        with its error code (each becomes an error event)."""
        entered: list[tuple[DiagnosticEntry, str]] = []
        for entry in entries:
            if entry.name not in self._diagnostics and len(self._diagnostics) >= _MAX_TRACKED_DIAGNOSTICS:
                continue
            self._diagnostics[entry.name] = (entry, now)
            if entry.level != "error":
                self._in_error.discard(entry.name)
            elif entry.name not in self._in_error:
                self._in_error.add(entry.name)
                code = self.error_code_for(entry)
                self._count_error(code)
                entered.append((entry, code))  # the event keeps its own code, past the label budget too
        return entered

    def error_code_for(self, entry: DiagnosticEntry) -> str:
        """The error_code key-value, else the sensor the status maps to, else the status name."""
        if entry.error_code:
            return label_safe(entry.error_code)
        sensor = self._sensor_of(entry.name)
        return sensor.name if sensor is not None else label_safe(entry.name)

    def _count_error(self, code: str) -> None:
        if code not in self._errors and len(self._errors) >= self.settings.max_error_codes - 1:
            code = OVERFLOW_ERROR_CODE
        self._errors[code] = self._errors.get(code, 0) + 1

    def _sensor_of(self, status_name: str) -> SensorSpec | None:
        for spec in self.settings.sensors:
            if spec.diagnostic_prefix and status_name.startswith(spec.diagnostic_prefix):
                return spec
        return None

    # Output -------------------------------------------------------------------------------

    @property
    def errors(self) -> dict[str, int]:
        return dict(self._errors)

    def input_ages(self, now: float) -> dict[str, float]:
        """Age in seconds of every input received at least once."""
        return {name: max(0.0, now - stamped.received) for name, stamped in self._inputs.items()}

    def stale_inputs(self, now: float) -> list[str]:
        """Inputs never received or older than their limit."""
        s = self.settings
        limits = {
            "battery": s.battery_stale_s,
            "position": s.position_stale_s,
            "pose": s.pose_stale_s,
            "status": s.status_stale_s,
        }
        return [name for name, limit in limits.items() if self._fresh(name, now, limit) is None]

    def _fresh(self, name: str, now: float, limit: float) -> _Stamped | None:
        stamped = self._inputs.get(name)
        if stamped is None or (limit > 0 and now - stamped.received > limit):
            return None
        return stamped

    def _aged(self, name: str, now: float, limit: float) -> Battery | Position | Pose | None:
        stamped = self._fresh(name, now, limit)
        if stamped is None or isinstance(stamped.value, str):
            return None
        return replace(stamped.value, age_s=max(0.0, now - stamped.received))

    def sensor_reports(self, now: float) -> dict[str, SensorReport]:
        return {spec.name: self._sensor_report(spec, now) for spec in self.settings.sensors}

    def _sensor_report(self, spec: SensorSpec, now: float) -> SensorReport:
        s = self.settings
        candidates: list[tuple[str, str]] = []  # (status, message)
        rate: float | None = None
        if spec.topic:
            meter = self._meters[spec.name]
            window = s.liveness_window_s
            rate = meter.rate(now, window)
            warming_up = now - self._started < window
            if meter.count() == 0:
                candidates.append(("stale", f"no messages on {spec.topic}"))
            elif not warming_up and rate < spec.min_rate_hz:
                candidates.append(("stale", f"{rate:.1f} Hz on {spec.topic}, expected >= {spec.min_rate_hz:g} Hz"))
            else:
                candidates.append(("ok", ""))
        if spec.diagnostic_prefix:
            for name, (entry, received) in self._diagnostics.items():
                if name.startswith(spec.diagnostic_prefix) and now - received <= s.diagnostics_stale_s:
                    candidates.append((entry.level, entry.message))
        if not candidates:
            candidates.append(("stale", "no recent diagnostics"))
        status, message = max(candidates, key=lambda c: SENSOR_STATUSES.index(c[0]))
        return SensorReport(status=status, rate_hz=rate, message=message[:MAX_MESSAGE_CHARS])

    def build(
        self, now: float, wall_time: float, events: tuple[VehicleEvent, ...] = (), link: LinkReport | None = None
    ) -> VehicleSnapshot:
        """The next snapshot (seq increments), every value aged at `now` (monotonic seconds); `link` the pusher's
        view of its link (bridge/link.py), None: not reported."""
        s = self.settings
        self.seq += 1
        status = self._fresh("status", now, s.status_stale_s)
        battery = self._aged("battery", now, s.battery_stale_s)
        position = self._aged("position", now, s.position_stale_s)
        pose = self._aged("pose", now, s.pose_stale_s)
        return VehicleSnapshot(
            vehicle_id=s.vehicle_id,
            boot_id=self.boot_id,
            seq=self.seq,
            sent_at=wall_time,
            status=None if status is None else str(status.value),
            battery=battery if isinstance(battery, Battery) else None,
            position=position if isinstance(position, Position) else None,
            pose=pose if isinstance(pose, Pose) else None,
            sensors=self.sensor_reports(now),
            errors=self._errors,
            events=events,
            link=link,
        )
