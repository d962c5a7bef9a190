"""Prometheus custom collector over the fleet state: fresh metric families on every scrape.

Every roster vehicle appears from start-up (offline, heartbeat age +Inf until first contact),
so a vehicle that never reports or dies stays visible. Unknown values are absent, never NaN.
Last-known values of an offline vehicle stay exported (its last position is what an operator
needs to find it); `vehicle_up`, `vehicle_status{status="offline"}` and the ages say they are old.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from ..model import SENSOR_STATUSES
from .fleet import FleetState

_V = ["vehicle_id"]


class FleetCollector(Collector):
    """Renders `FleetState` as the vehicle_* metric families."""

    def __init__(self, fleet: FleetState) -> None:
        self.fleet = fleet

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        now = fleet.clock.monotonic()
        g = _families()
        errors = CounterMetricFamily(
            "vehicle_errors",
            "Error events reported by the vehicle, across bridge and aggregator restarts.",
            labels=["vehicle_id", "error_code"],
        )
        restarts = CounterMetricFamily(
            "vehicle_bridge_restarts",
            "Times the vehicle's bridge started a new boot_id after the first one seen.",
            labels=_V,
        )
        online = 0
        for v in fleet:
            vid = [v.vehicle_id]
            age = v.heartbeat_age(now)
            up = fleet.is_online(v, now)
            online += up
            current = fleet.status_of(v, now)
            for status in fleet.all_statuses:
                g["status"].add_metric([v.vehicle_id, status], 1.0 if status == current else 0.0)
            g["up"].add_metric(vid, 1.0 if up else 0.0)
            g["heartbeat_age"].add_metric(vid, age)
            g["on_roster"].add_metric(vid, 1.0 if v.on_roster else 0.0)
            if v.heartbeat_wall is not None:
                g["heartbeat_ts"].add_metric(vid, v.heartbeat_wall)
            if v.clock_skew_s is not None:
                g["skew"].add_metric(vid, v.clock_skew_s)
            for code, count in v.errors_total.items():
                errors.add_metric([v.vehicle_id, code], float(count))
            if v.boots:
                restarts.add_metric(vid, float(v.restarts))
            snap = v.snapshot
            if snap is None:
                continue
            if snap.battery is not None:
                b = snap.battery
                _maybe(g["battery"], vid, b.percentage)
                _maybe(g["voltage"], vid, b.voltage)
                _maybe(g["charging"], vid, None if b.charging is None else float(b.charging))
                g["input_age"].add_metric([v.vehicle_id, "battery"], b.age_s)
            if snap.position is not None:
                p = snap.position
                g["fix"].add_metric(vid, 1.0 if p.fix else 0.0)
                if p.fix:
                    _maybe(g["latitude"], vid, p.latitude)
                    _maybe(g["longitude"], vid, p.longitude)
                    _maybe(g["altitude"], vid, p.altitude)
                g["input_age"].add_metric([v.vehicle_id, "position"], p.age_s)
            if snap.pose is not None:
                q = snap.pose
                g["x"].add_metric(vid, q.x)
                g["y"].add_metric(vid, q.y)
                g["yaw"].add_metric(vid, q.yaw)
                g["speed"].add_metric(vid, q.speed)
                g["input_age"].add_metric([v.vehicle_id, "pose"], q.age_s)
            for name, report in snap.sensors.items():
                for status in SENSOR_STATUSES:
                    g["sensor"].add_metric([v.vehicle_id, name, status], 1.0 if status == report.status else 0.0)
                _maybe(g["sensor_rate"], [v.vehicle_id, name], report.rate_hz)
        g["online"].add_metric([], float(online))
        total = UnknownMetricFamily(
            "vehicles_total",
            "Roster vehicles plus accepted unknown vehicles (a gauge; untyped only because the name's _total "
            "suffix is the fleet's contract and linters reserve it for counters).",
            value=float(len(fleet)),
        )
        yield from g.values()
        yield total
        yield errors
        yield restarts


def _maybe(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)


def _families() -> dict[str, GaugeMetricFamily]:
    def gauge(name: str, doc: str, labels: list[str] = _V) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    return {
        "status": gauge(
            "vehicle_status",
            "1 for the vehicle's current status (offline when its heartbeat is too old), else 0.",
            ["vehicle_id", "status"],
        ),
        "up": gauge("vehicle_up", "1 while the vehicle's heartbeat is younger than offline_after_s."),
        "on_roster": gauge("vehicle_on_roster", "1 for vehicles of the configured roster, 0 for accepted unknowns."),
        "heartbeat_age": gauge(
            "vehicle_last_heartbeat_seconds_ago",
            "Seconds since the aggregator last accepted a snapshot from the vehicle (+Inf: never).",
        ),
        "heartbeat_ts": gauge(
            "vehicle_last_heartbeat_timestamp_seconds", "Unix time the aggregator last accepted a snapshot."
        ),
        "skew": gauge(
            "vehicle_clock_skew_seconds", "Vehicle clock minus aggregator clock at the last accepted snapshot."
        ),
        "battery": gauge("vehicle_battery_level", "Battery charge in percent (0-100)."),
        "voltage": gauge("vehicle_battery_voltage_volts", "Battery voltage."),
        "charging": gauge("vehicle_battery_charging", "1 while the battery is charging."),
        "fix": gauge("vehicle_gps_fix", "1 while the GNSS receiver has a fix."),
        "latitude": gauge("vehicle_latitude", "Latitude in degrees (WGS84), while the GNSS has a fix."),
        "longitude": gauge("vehicle_longitude", "Longitude in degrees (WGS84), while the GNSS has a fix."),
        "altitude": gauge("vehicle_altitude_meters", "Altitude in meters, while the GNSS has a fix."),
        "x": gauge("vehicle_pose_x_meters", "Odometry x position in the pose frame."),
        "y": gauge("vehicle_pose_y_meters", "Odometry y position in the pose frame."),
        "yaw": gauge("vehicle_pose_yaw_radians", "Odometry heading."),
        "speed": gauge("vehicle_speed_meters_per_second", "Linear speed from odometry."),
        "input_age": gauge(
            "vehicle_input_age_seconds",
            "Age of each input (battery, position, pose) on the vehicle when it was sent: a frozen driver grows it.",
            ["vehicle_id", "input"],
        ),
        "sensor": gauge(
            "vehicle_sensor_status",
            "1 for the current status of each sensor, else 0.",
            ["vehicle_id", "sensor", "status"],
        ),
        "sensor_rate": gauge(
            "vehicle_sensor_rate_hertz",
            "Measured message rate of each watched sensor topic.",
            ["vehicle_id", "sensor"],
        ),
        "online": gauge("vehicles_online", "Vehicles whose heartbeat is younger than offline_after_s.", []),
    }


REJECTION_REASONS: tuple[str, ...] = (
    "malformed",
    "schema",
    "non_finite",
    "out_of_range",
    "unsupported_version",
    "limit_sensors",
    "limit_error_codes",
    "limit_vehicles",
    "too_large",
    "body_timeout",
    "content_type",
    "unauthenticated",
    "forbidden",
    "unknown_vehicle",
    "rate_limited",
)
"""Every `reason` a push can be rejected for; all start at 0 so rate() works from the first scrape."""


class ServiceMetrics:
    """The aggregator's own RED metrics and ingest/persistence counters, in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the output and no rule of ours needs them
        self.requests = Counter(
            "http_requests", "HTTP requests handled.", ["method", "endpoint", "status"], registry=registry
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request handling time.",
            ["endpoint"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.received = Counter(
            "telemetry_snapshots_received",
            "Valid, authorised snapshots received (including retries).",
            registry=registry,
        )
        self.duplicates = Counter(
            "telemetry_snapshots_duplicate",
            "Received snapshots already applied (same or older boot_id/seq), acknowledged and ignored.",
            registry=registry,
        )
        self.rejected = Counter(
            "telemetry_snapshots_rejected", "Pushes refused, by reason.", ["reason"], registry=registry
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        self.state_saves = Counter("telemetry_state_saves", "Successful writes of the state file.", registry=registry)
        self.state_save_failures = Counter(
            "telemetry_state_save_failures",
            "Failed writes of the state file (disk full, read-only, ...).",
            registry=registry,
        )
        self.state_healthy = Gauge(
            "telemetry_state_persistence_healthy",
            "1 while the last state file write succeeded (or persistence is off), 0 while writes fail.",
            registry=registry,
        )
        self.state_healthy.set(1)
        self.state_last_save = Gauge(
            "telemetry_state_last_save_timestamp_seconds",
            "Unix time of the last successful state file write.",
            registry=registry,
        )
        self.build_info = Gauge(
            "telemetry_aggregator_build_info", "Version of the running aggregator.", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)
