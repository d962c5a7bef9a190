"""The operator's view of the fleet: one row per vehicle, worst first. Pure: reads FleetState, no I/O.

Shared by the status page (HTML) and GET /api/v1/vehicles (JSON). The attention levels use the
thresholds of the shipped alerts (config/prometheus/alerts.yml), so the page and the pager agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..model import UNKNOWN_STATUS, LinkOutage
from .fleet import FleetState, VehicleState
from .geofence import IN_KEEP_OUT, Verdict
from .geofence_monitor import GeofenceMonitor

CRITICAL, WARNING, OK = 0, 1, 2
"""Attention levels, most urgent first (they sort)."""
LEVEL_NAMES = {CRITICAL: "critical", WARNING: "warning", OK: "ok"}

BATTERY_CRITICAL_PCT = 10.0
BATTERY_LOW_PCT = 20.0
ALARM_STATUSES = frozenset({"emergency_stop", "error"})
"""Reported vehicle statuses that need an operator now."""
_BAD_SENSOR = frozenset({"error", "stale"})


@dataclass(frozen=True, slots=True)
class SensorView:
    name: str
    status: str
    rate_hz: float | None
    message: str


@dataclass(frozen=True, slots=True)
class LinkView:
    """The vehicle's own view of its link: counters across boots (as exported), the last RTT and outage as its
    last snapshot reported them."""

    failed_pushes: int
    outages: int
    outage_seconds: float
    rtt_s: float | None
    last_outage: LinkOutage | None

    def to_json(self) -> dict[str, Any]:
        last = self.last_outage
        return {
            "failed_pushes_total": self.failed_pushes,
            "outages_total": self.outages,
            "outage_seconds_total": self.outage_seconds,
            "rtt_s": self.rtt_s,
            "last_outage": None if last is None else {name: getattr(last, name) for name in last.__slots__},
        }


@dataclass(frozen=True, slots=True)
class VehicleRow:
    """What the status page shows for one vehicle. Values are the last known; `online` says if they are live."""

    vehicle_id: str
    status: str
    online: bool
    on_roster: bool
    heartbeat_age_s: float | None
    """None: never heard from since the aggregator started."""
    battery_pct: float | None
    charging: bool | None
    latitude: float | None
    longitude: float | None
    sensors: tuple[SensorView, ...]
    errors_total: int
    errors: dict[str, int]
    level: int
    reasons: tuple[str, ...]
    """Why the row needs attention, in words, most important first."""
    geofence: str | None = None
    """The geofence status (geofence.GEOFENCE_STATUSES), None while geofencing is off."""
    violation: tuple[str, str] | None = None
    """(zone, kind) of the violation at the last known fix, however old (kept while the vehicle is silent)."""
    events: tuple[Mapping[str, Any], ...] = ()
    """The vehicle's last error events written to the events log (timestamp, level, component, code, message,
    id), oldest first."""
    link: LinkView | None = None
    """None: the vehicle never reported its link (an older bridge)."""

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES[self.level]

    def to_json(self) -> dict[str, Any]:
        return {
            "vehicle_id": self.vehicle_id,
            "status": self.status,
            "online": self.online,
            "on_roster": self.on_roster,
            "heartbeat_age_s": self.heartbeat_age_s,
            "battery_pct": self.battery_pct,
            "charging": self.charging,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "sensors": [
                {"name": s.name, "status": s.status, "rate_hz": s.rate_hz, "message": s.message} for s in self.sensors
            ],
            "errors_total": self.errors_total,
            "errors": dict(self.errors),
            "attention": self.level_name,
            "reasons": list(self.reasons),
            "geofence": None
            if self.geofence is None
            else {
                "status": self.geofence,
                "violation": None if self.violation is None else {"zone": self.violation[0], "kind": self.violation[1]},
            },
            "events": [dict(e) for e in self.events],
            "link": None if self.link is None else self.link.to_json(),
        }


@dataclass(frozen=True, slots=True)
class FleetView:
    generated_at: float
    """Unix time of the view."""
    offline_after_s: float
    rows: tuple[VehicleRow, ...]

    @property
    def online(self) -> int:
        return sum(1 for r in self.rows if r.online)

    def count(self, level: int) -> int:
        return sum(1 for r in self.rows if r.level == level)

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at,
            "offline_after_s": self.offline_after_s,
            "vehicles_online": self.online,
            "vehicles_total": len(self.rows),
            "vehicles": [r.to_json() for r in self.rows],
        }


def build_view(
    fleet: FleetState,
    geofence: GeofenceMonitor | None = None,
    recent_events: Callable[[str], list[dict[str, Any]]] | None = None,
) -> FleetView:
    """Every vehicle this aggregator reports (`FleetState.exported`), worst first (attention level, then battery,
    then id); `recent_events` gives a vehicle's last error events (EventLog.last_events)."""
    now = fleet.clock.monotonic()
    fences = geofence if geofence is not None and geofence.enabled else None
    rows = [
        replace(_row(fleet, vehicle, now, fences), events=tuple(recent_events(vehicle.vehicle_id)))
        if recent_events is not None
        else _row(fleet, vehicle, now, fences)
        for vehicle in fleet.exported(now)
    ]
    rows.sort(key=lambda r: (r.level, r.battery_pct if r.battery_pct is not None else 101.0, r.vehicle_id))
    return FleetView(generated_at=fleet.clock.time(), offline_after_s=fleet.offline_after_s, rows=tuple(rows))


def _row(fleet: FleetState, vehicle: VehicleState, now: float, fences: GeofenceMonitor | None) -> VehicleRow:
    age = vehicle.heartbeat_age(now)
    online = fleet.is_online(vehicle, now)
    status = fleet.status_of(vehicle, now)
    snap = vehicle.snapshot
    battery = snap.battery if snap else None
    position = snap.position if snap else None
    sensors = (
        tuple(
            SensorView(name, report.status, report.rate_hz, report.message)
            for name, report in sorted(snap.sensors.items())
        )
        if snap
        else ()
    )
    pct = battery.percentage if battery else None
    level, reasons = _attention(
        status,
        online=online,
        on_roster=vehicle.on_roster,
        battery_pct=pct,
        charging=battery.charging if battery else None,
        sensors=sensors,
    )
    verdict = last = None
    if fences is not None:
        verdict, last = fences.status(vehicle.vehicle_id, now), fences.last_violation(vehicle.vehicle_id)
        if last is not None:
            level, reasons = _geofence_attention(level, reasons, online=online, live=verdict.violation, last=last)
    has_fix = position is not None and position.fix
    return VehicleRow(
        vehicle_id=vehicle.vehicle_id,
        status=status,
        online=online,
        on_roster=vehicle.on_roster,
        heartbeat_age_s=None if age == float("inf") else age,
        battery_pct=pct,
        charging=battery.charging if battery else None,
        latitude=position.latitude if has_fix and position else None,
        longitude=position.longitude if has_fix and position else None,
        sensors=sensors,
        errors_total=sum(vehicle.errors_total.values()),
        errors=dict(vehicle.errors_total),
        level=level,
        reasons=tuple(reasons),
        geofence=None if verdict is None else verdict.status,
        violation=None if last is None or last.zone is None or last.zone_kind is None else (last.zone, last.zone_kind),
        link=_link(vehicle),
    )


def _link(vehicle: VehicleState) -> LinkView | None:
    if not vehicle.link_total:
        return None
    totals, report = vehicle.link_total, vehicle.snapshot.link if vehicle.snapshot else None
    return LinkView(
        failed_pushes=int(totals.get("failed_attempts_total", 0)),
        outages=int(totals.get("outages_total", 0)),
        outage_seconds=totals.get("outage_seconds_total", 0.0),
        rtt_s=None if report is None else report.rtt_s,
        last_outage=None if report is None else report.last_outage,
    )


def _geofence_attention(
    level: int, reasons: list[str], *, online: bool, live: bool, last: Verdict
) -> tuple[int, list[str]]:
    """A geofence violation is critical, live or at the last known fix (as the alerts page it)."""
    where = f"in keep-out zone {last.zone}" if last.status == IN_KEEP_OUT else f"outside operating area {last.zone}"
    reason = where if online and live else f"last seen {where}"
    return CRITICAL, [reasons[0], reason, *reasons[1:]] if not online else [reason, *reasons]


def _attention(
    status: str,
    *,
    online: bool,
    on_roster: bool,
    battery_pct: float | None,
    charging: bool | None,
    sensors: tuple[SensorView, ...],
) -> tuple[int, list[str]]:
    """Attention level and reasons. Offline vehicles are judged on being offline only: their values are old."""
    if not online:
        return (CRITICAL if on_roster else WARNING), ["offline"]
    found: list[tuple[int, str]] = []
    if status in ALARM_STATUSES:
        found.append((CRITICAL, f"status {status}"))
    elif status == UNKNOWN_STATUS:
        found.append((WARNING, "status unknown"))
    if battery_pct is not None and battery_pct < BATTERY_CRITICAL_PCT:
        found.append((CRITICAL, f"battery {battery_pct:.0f} %"))
    elif battery_pct is not None and battery_pct < BATTERY_LOW_PCT and not charging:
        found.append((WARNING, f"battery {battery_pct:.0f} %"))
    found += [(WARNING, f"{s.name} {s.status}") for s in sensors if s.status in _BAD_SENSOR]
    if not found:
        return OK, []
    found.sort(key=lambda item: item[0])
    return found[0][0], [reason for _, reason in found]
