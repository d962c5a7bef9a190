"""Prometheus exposition of the fleet state: every roster vehicle, alive or not, on every scrape.

Every roster vehicle appears from start-up (offline, heartbeat age +Inf until first contact),
so a vehicle that never reports or dies stays visible. Unknown values are absent, never NaN.
Last-known values of an offline vehicle stay exported (its last position is what an operator
needs to find it); `vehicle_up`, `vehicle_status{status="offline"}` and the ages say they are old. While
history is written to Prometheus (`history.remote_write_url`) they stop when the vehicle goes offline instead,
and the backlog fills the outage in (docs/history.md).

Two renderings of the same samples (`_vehicle_samples` is their one source):
- `FleetCollector.collect()` builds prometheus_client metric families (registries, tests, get_sample_value);
- `Exposition.render()` serves /metrics: a vehicle's lines are formatted at most once per change of the
  vehicle (`VehicleState.version`, lazily at the next scrape) and kept as text, so a scrape formats what
  moves with the clock (heartbeat age, up, status), the lines of vehicles that changed since the last
  scrape, and joins strings; for 10,000 vehicles prometheus_client's generic path formats ~400,000 samples
  every time. The bytes are those prometheus_client's encoders write for `collect()` (test_exposition
  checks it), in text and OpenMetrics format alike.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE_OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..errors import REJECTION_REASONS
from ..model import LINK_COUNTERS, SENSOR_STATUSES, SensorReport, VehicleSnapshot
from .connections import REFUSAL_REASONS as CONNECTION_REFUSAL_REASONS
from .event_log import DROP_REASONS as EVENT_DROP_REASONS
from .fleet import FleetState, VehicleState
from .geofence import GEOFENCE_STATUSES
from .geofence_monitor import GeofenceMonitor
from .history import OUTCOMES as HISTORY_OUTCOMES
from .slices import Slices

_V = ("vehicle_id",)


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    doc: str
    labels: tuple[str, ...] = _V
    counter: bool = False

    def empty(self) -> GaugeMetricFamily | CounterMetricFamily:
        family = CounterMetricFamily if self.counter else GaugeMetricFamily
        return family(self.name, self.doc, labels=list(self.labels))


_FAMILIES: tuple[_Family, ...] = (
    _Family(
        "vehicle_status",
        "1 for the vehicle's current status (offline when its heartbeat is too old), else 0.",
        ("vehicle_id", "status"),
    ),
    _Family("vehicle_up", "1 while the vehicle's heartbeat is younger than offline_after_s."),
    _Family("vehicle_on_roster", "1 for vehicles of the configured roster, 0 for accepted unknowns."),
    _Family(
        "vehicle_last_heartbeat_seconds_ago",
        "Seconds since the aggregator last accepted a snapshot from the vehicle (+Inf: never).",
    ),
    _Family("vehicle_last_heartbeat_timestamp_seconds", "Unix time the aggregator last accepted a snapshot."),
    _Family("vehicle_clock_skew_seconds", "Vehicle clock minus aggregator clock at the last accepted snapshot."),
    _Family("vehicle_battery_level", "Battery charge in percent (0-100)."),
    _Family("vehicle_battery_voltage_volts", "Battery voltage."),
    _Family("vehicle_battery_charging", "1 while the battery is charging."),
    _Family("vehicle_gps_fix", "1 while the GNSS receiver has a fix."),
    _Family("vehicle_latitude", "Latitude in degrees (WGS84), while the GNSS has a fix."),
    _Family("vehicle_longitude", "Longitude in degrees (WGS84), while the GNSS has a fix."),
    _Family("vehicle_altitude_meters", "Altitude in meters, while the GNSS has a fix."),
    _Family("vehicle_pose_x_meters", "Odometry x position in the pose frame."),
    _Family("vehicle_pose_y_meters", "Odometry y position in the pose frame."),
    _Family("vehicle_pose_yaw_radians", "Odometry heading."),
    _Family("vehicle_speed_meters_per_second", "Linear speed from odometry."),
    _Family(
        "vehicle_input_age_seconds",
        "Age of each input (battery, position, pose) on the vehicle when it was sent: a frozen driver grows it.",
        ("vehicle_id", "input"),
    ),
    _Family(
        "vehicle_sensor_status", "1 for the current status of each sensor, else 0.", ("vehicle_id", "sensor", "status")
    ),
    _Family(
        "vehicle_sensor_rate_hertz", "Measured message rate of each watched sensor topic.", ("vehicle_id", "sensor")
    ),
    _Family("vehicle_link_rtt_seconds", "Round-trip time of the vehicle's last accepted push, as it measured it."),
    _Family(
        "vehicle_link_last_outage_timestamp_seconds",
        "Unix time (vehicle clock) the vehicle's ongoing or last link outage began (edge=start) and ended (edge=end).",
        ("vehicle_id", "edge"),
    ),
    _Family(
        "vehicle_link_last_outage_latitude",
        "Last known latitude where the vehicle's ongoing or last link outage began (edge=start) and ended (edge=end).",
        ("vehicle_id", "edge"),
    ),
    _Family(
        "vehicle_link_last_outage_longitude",
        "Last known longitude where the vehicle's ongoing or last link outage began (edge=start) and ended (edge=end).",
        ("vehicle_id", "edge"),
    ),
)
_ONLINE = _Family("vehicles_online", "Vehicles whose heartbeat is younger than offline_after_s.", ())
_TOTAL_DOC = (
    "Roster vehicles plus accepted unknown vehicles (a gauge; untyped only because the name's _total "
    "suffix is the fleet's contract and linters reserve it for counters)."
)
_TAIL: tuple[_Family, ...] = (
    _Family(
        "vehicle_errors",
        "Error events reported by the vehicle, across bridge and aggregator restarts.",
        ("vehicle_id", "error_code"),
        counter=True,
    ),
    _Family(
        "vehicle_bridge_restarts",
        "Times the vehicle's bridge started a new boot_id after the first one seen.",
        counter=True,
    ),
    _Family(
        "vehicle_sensor_names_folded",
        'Sensor reports exported as sensor="other" because their name was past the vehicle\'s sensor-name budget.',
        counter=True,
    ),
    _Family("vehicle_link_failed_pushes", "Pushes the vehicle saw fail, across boots.", counter=True),
    _Family("vehicle_link_outages", "Link outages the vehicle saw begin, across boots.", counter=True),
    _Family(
        "vehicle_link_outage_seconds",
        "Time the vehicle spent in link outages (the ongoing one up to its last snapshot), across boots.",
        counter=True,
    ),
)
_PER_VEHICLE = (*_FAMILIES, *_TAIL)
"""Families with per-vehicle samples, in exposition order (vehicles_online and vehicles_total sit between)."""
(
    _STATUS,
    _UP,
    _ON_ROSTER,
    _HB_AGE,
    _HB_TS,
    _SKEW,
    _BATTERY,
    _VOLTAGE,
    _CHARGING,
    _FIX,
    _LAT,
    _LON,
    _ALT,
    _X,
    _Y,
    _YAW,
    _SPEED,
    _INPUT_AGE,
    _SENSOR,
    _SENSOR_RATE,
    _LINK_RTT,
    _OUTAGE_TS,
    _OUTAGE_LAT,
    _OUTAGE_LON,
    _ERRORS,
    _RESTARTS,
    _SENSORS_FOLDED,
    _LINK_FAILED,
    _LINK_OUTAGES,
    _LINK_OUTAGE_S,
) = range(len(_PER_VEHICLE))
_LINK_TOTALS = dict(zip(LINK_COUNTERS, (_LINK_FAILED, _LINK_OUTAGES, _LINK_OUTAGE_S), strict=True))
Sample = tuple[int, tuple[str, ...], float]
"""(family index, label values after vehicle_id, value): vehicle_id is every family's first label."""


def _live(fleet: FleetState, v: VehicleState, now: float) -> tuple[str, bool, float]:
    """What moves with the clock alone: current status, up, heartbeat age."""
    return fleet.status_of(v, now), fleet.is_online(v, now), v.heartbeat_age(now)


def _live_samples(fleet: FleetState, v: VehicleState, now: float) -> Iterator[Sample]:
    current, up, age = _live(fleet, v, now)
    for status in fleet.all_statuses:
        yield _STATUS, (status,), 1.0 if status == current else 0.0
    yield _UP, (), 1.0 if up else 0.0
    yield _HB_AGE, (), age


def _vehicle_samples(v: VehicleState, values: bool = True) -> Iterator[Sample]:
    """Every sample of one vehicle that changes only when its state does (i.e. with `v.version`); without the
    values of its last snapshot when `values` is false (an offline vehicle while history is backfilled)."""
    yield _ON_ROSTER, (), 1.0 if v.on_roster else 0.0
    if v.heartbeat_wall is not None:
        yield _HB_TS, (), v.heartbeat_wall
    if v.clock_skew_s is not None:
        yield _SKEW, (), v.clock_skew_s
    for code, count in v.errors_total.items():
        yield _ERRORS, (code,), float(count)
    if v.boots:
        yield _RESTARTS, (), float(v.restarts)
        yield _SENSORS_FOLDED, (), float(v.sensors_folded)
    for name, total in v.link_total.items():
        yield _LINK_TOTALS[name], (), total
    snap = v.snapshot
    outage = None if snap is None or snap.link is None else snap.link.last_outage
    if outage is not None:  # a past fact, not a value: kept while the vehicle is silent
        for edge, at, lat, lon in (
            ("start", outage.started_at, outage.start_lat, outage.start_lon),
            ("end", outage.ended_at, outage.end_lat, outage.end_lon),
        ):
            if at is not None:
                yield _OUTAGE_TS, (edge,), at
                if lat is not None and lon is not None:
                    yield _OUTAGE_LAT, (edge,), lat
                    yield _OUTAGE_LON, (edge,), lon
    if snap is None or not values:
        return
    if snap.battery is not None:
        b = snap.battery
        if b.percentage is not None:
            yield _BATTERY, (), b.percentage
        if b.voltage is not None:
            yield _VOLTAGE, (), b.voltage
        if b.charging is not None:
            yield _CHARGING, (), float(b.charging)
        yield _INPUT_AGE, ("battery",), b.age_s
    if snap.position is not None:
        p = snap.position
        yield _FIX, (), 1.0 if p.fix else 0.0
        if p.fix:
            if p.latitude is not None:
                yield _LAT, (), p.latitude
            if p.longitude is not None:
                yield _LON, (), p.longitude
            if p.altitude is not None:
                yield _ALT, (), p.altitude
        yield _INPUT_AGE, ("position",), p.age_s
    if snap.pose is not None:
        q = snap.pose
        yield _X, (), q.x
        yield _Y, (), q.y
        yield _YAW, (), q.yaw
        yield _SPEED, (), q.speed
        yield _INPUT_AGE, ("pose",), q.age_s
    for name, report in v.sensors.items():
        for status in SENSOR_STATUSES:
            yield _SENSOR, (name, status), 1.0 if status == report.status else 0.0
        if report.rate_hz is not None:
            yield _SENSOR_RATE, (name,), report.rate_hz
    if snap.link is not None and snap.link.rtt_s is not None:
        yield _LINK_RTT, (), snap.link.rtt_s


_VALUE_FAMILIES = range(_BATTERY, _SENSOR_RATE + 1)
"""The families that carry a snapshot's values (what history backfills), as opposed to liveness and counters."""


def value_samples(
    vehicle_id: str, snap: VehicleSnapshot, sensors: Mapping[str, SensorReport]
) -> Iterator[tuple[str, dict[str, str], float]]:
    """The value samples one snapshot makes, as /metrics names and labels them (`sensors` as exported, i.e.
    folded into the vehicle's sensor-name budget): (metric name, labels with vehicle_id, value)."""
    vehicle = VehicleState(vehicle_id, on_roster=False, snapshot=snap, sensors=sensors)
    for index, labels, value in _vehicle_samples(vehicle):
        if index in _VALUE_FAMILIES:
            family = _PER_VEHICLE[index]
            yield family.name, dict(zip(family.labels, (vehicle_id, *labels), strict=True)), value


def _fleet_wide(online: int, total: int) -> list[Metric]:
    """vehicles_online and vehicles_total (of the vehicles exported), which sit between the per-vehicle families."""
    family = _ONLINE.empty()
    family.add_metric([], float(online))
    return [family, UnknownMetricFamily("vehicles_total", _TOTAL_DOC, value=float(total))]


class FleetCollector(Collector):
    """Renders `FleetState` as prometheus_client metric families (the reference rendering)."""

    def __init__(self, fleet: FleetState) -> None:
        self.fleet = fleet

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        now = fleet.clock.monotonic()
        families = [f.empty() for f in _PER_VEHICLE]
        online = total = 0
        for v in fleet.exported(now):
            online += fleet.is_online(v, now)
            total += 1
            values = fleet.values_while_offline or fleet.is_online(v, now)
            for samples in (_live_samples(fleet, v, now), _vehicle_samples(v, values)):
                for index, labels, value in samples:
                    families[index].add_metric((v.vehicle_id, *labels), value)
        yield from families[: len(_FAMILIES)]
        yield from _fleet_wide(online, total)
        yield from families[len(_FAMILIES) :]


_GEOFENCE_STATUS = _Family(
    "vehicle_geofence_status",
    "1 for the vehicle's geofence status (unknown without a fix younger than geofences.max_fix_age_s).",
    ("vehicle_id", "status"),
)
_GEOFENCE_DISTANCE = _Family(
    "vehicle_geofence_boundary_distance_meters",
    "Signed distance to the nearest applicable operating area's boundary: positive inside, negative outside.",
)
_GEOFENCE_HOT = (_GEOFENCE_STATUS, _GEOFENCE_DISTANCE)
"""The geofence families with samples for every vehicle: rendered from text caches on /metrics."""


class GeofenceCollector(Collector):
    """Each vehicle's geofence status, boundary distance and last known violation (none while geofencing is
    off). One to three series per vehicle whatever the number of zones; evaluated at scrape time, so a fix that
    ages past the limit turns `unknown` without a push. `collect()` is the reference rendering; /metrics
    writes the same bytes (`Exposition`), the per-vehicle families from cached text."""

    def __init__(self, fleet: FleetState, monitor: GeofenceMonitor) -> None:
        self.fleet = fleet
        self.monitor = monitor

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if not self.monitor.enabled:
            return
        now = self.fleet.clock.monotonic()
        status, distance = (f.empty() for f in _GEOFENCE_HOT)
        for v in self.fleet:
            current = self.monitor.status(v.vehicle_id, now).status
            for name in GEOFENCE_STATUSES:
                status.add_metric([v.vehicle_id, name], 1.0 if name == current else 0.0)
            meters = self.monitor.boundary_distance_m(v.vehicle_id, now)
            if meters is not None:
                distance.add_metric([v.vehicle_id], meters)
        yield from (status, distance, *self.sparse())

    def sparse(self) -> list[Metric]:
        """The families with few samples: violations (vehicles in one) and the zone counts."""
        violation = GaugeMetricFamily(
            "vehicle_geofence_violation",
            "1 while the vehicle's last known fix, however old, violates a zone: the zone and its kind.",
            labels=["vehicle_id", "zone", "kind"],
        )
        for v in self.fleet:
            last = self.monitor.last_violation(v.vehicle_id)
            if last is not None and last.zone is not None and last.zone_kind is not None:
                violation.add_metric([v.vehicle_id, last.zone, last.zone_kind], 1.0)
        zones = GaugeMetricFamily("geofence_zones", "Geofence zones loaded, by kind.", labels=["kind"])
        for kind, count in self.monitor.zone_counts().items():
            zones.add_metric([kind], float(count))
        return [violation, zones]

    def chunks(
        self, encoder: Encoder, headers: tuple[str, ...], cache: dict[str, tuple[str, str, str]]
    ) -> Iterator[str]:
        """The same text as `encoder` over `collect()`, in pieces with pauses as `Exposition.chunks`; `headers` are
        the hot families' HELP/TYPE lines in the encoder's format, `cache` maps a vehicle to (its status, that
        status's lines, its distance prefix)."""
        if not self.monitor.enabled:
            return
        now = self.fleet.clock.monotonic()
        vehicles = list(self.fleet)
        status_column: list[str] = []
        distance_column: list[str] = []
        status_line = _GeofenceLines.status.line
        slices = Slices()
        for v in vehicles:
            vid = v.vehicle_id
            current = self.monitor.status(vid, now).status
            entry = cache.get(vid)
            if entry is None or entry[0] != current:
                tail = _escape(vid) + '"} '
                lines = "".join([status_line(tail, (s,), 1.0 if s == current else 0.0) for s in GEOFENCE_STATUSES])
                entry = cache[vid] = (current, lines, _GeofenceLines.distance.head + tail)
            status_column.append(entry[1])
            meters = self.monitor.boundary_distance_m(vid, now)
            if meters is not None:
                distance_column.append(entry[2] + _number(meters) + "\n")
            if slices.over():
                yield ""
                slices.restart()
        if len(cache) > 2 * len(vehicles) + 100:  # vehicles that left the fleet
            cache.clear()
        yield headers[0] + "".join(status_column)
        yield headers[1] + "".join(distance_column)
        yield _without_eof(encoder(_Registry(self.sparse())).decode())


# -- the /metrics fast path ----------------------------------------------------------------------


def _escape(value: str) -> str:
    if '"' in value or "\\" in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _go(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _number(value: float) -> str:
    """floatToGoString, with its common case (plain repr) first."""
    value = float(value)
    return repr(value) if -1e6 < value < 1e6 else _go(value)


class _LineFormat:
    """Sample lines of one family, formatted as prometheus_client's encoders do (labels sorted by name).

    vehicle_id sorts after every other label name of ours, so a line is
    `head % other_labels` + the vehicle's `vehicle_id="..."} ` + value.
    """

    def __init__(self, family: _Family) -> None:
        name = family.name + "_total" if family.counter else family.name
        others = family.labels[1:]
        if family.labels[0] != "vehicle_id" or list(others) != sorted(others) or any(k > "vehicle_id" for k in others):
            raise ValueError(f"{family.name}: labels must be vehicle_id then names sorting before it")
        self.head = name + "{" + "".join(f'{k}="%s",' for k in others) + 'vehicle_id="'

    def line(self, tail: str, labels: tuple[str, ...], value: float) -> str:
        """`tail` is the escaped vehicle id followed by `"} `."""
        head = self.head % tuple(map(_escape, labels)) if labels else self.head
        return head + tail + _number(value) + "\n"


_LINES = tuple(_LineFormat(f) for f in _PER_VEHICLE)


class _GeofenceLines:
    status = _LineFormat(_GEOFENCE_STATUS)
    distance = _LineFormat(_GEOFENCE_DISTANCE)


_HEADS = tuple(f.head for f in _LINES)
_NO_COLUMNS = ("",) * len(_PER_VEHICLE)
_LABELLED_HEADS: dict[tuple[int, tuple[str, ...]], str] = {}
"""A line's start up to its vehicle id, for each (family, other label values) seen: vehicles share sensor names,
inputs and error codes, so formatting them once saves a third of a changed vehicle's render."""
MAX_LABELLED_HEADS = 4096
"""Label values come from vehicles (sensor names, error codes): past this many the cache starts over."""


def _labelled_head(index: int, labels: tuple[str, ...]) -> str:
    if len(_LABELLED_HEADS) >= MAX_LABELLED_HEADS:
        _LABELLED_HEADS.clear()
    head = _LABELLED_HEADS[(index, labels)] = _HEADS[index] % tuple(map(_escape, labels))
    return head


class _Rendered:
    """One vehicle's exposition text, valid while `vehicle.version` has not moved.

    Kept per vehicle and refreshed in place: what depends only on the vehicle id (and its current status) is
    formatted once, and a scrape that brings thousands of vehicles up to date allocates no new container objects
    for them (each one the garbage collector would traverse: new ones made its collections during a scrape
    last 20-50 ms at 4,000 vehicles).
    """

    __slots__ = ("age_prefix", "columns", "status", "status_text", "tail", "up_text", "values", "vehicle", "version")
    vehicle: VehicleState
    version: int
    values: bool
    tail: str
    up_text: tuple[str, str]
    age_prefix: str
    status: str
    status_text: str
    columns: list[str]

    def __init__(self, vehicle: VehicleState, values: bool = True) -> None:
        self.tail = tail = _escape(vehicle.vehicle_id) + '"} '
        self.up_text = (_LINES[_UP].line(tail, (), 0.0), _LINES[_UP].line(tail, (), 1.0))
        self.age_prefix = _LINES[_HB_AGE].head + tail
        self.status = ""
        self.status_text = ""
        self.columns = [""] * len(_PER_VEHICLE)
        self.refresh(vehicle, values)

    def current(self, vehicle: VehicleState, values: bool) -> bool:
        return self.vehicle is vehicle and self.version == vehicle.version and self.values == values

    def refresh(self, vehicle: VehicleState, values: bool) -> None:
        """The vehicle's lines as it is now (`vehicle` has this entry's vehicle id)."""
        self.vehicle = vehicle
        self.version = vehicle.version
        self.values = values
        tail = self.tail
        columns = self.columns
        columns[:] = _NO_COLUMNS
        for index, labels, value in _vehicle_samples(vehicle, values):  # _LineFormat.line, inlined: the hot loop
            if labels:
                head = _LABELLED_HEADS.get((index, labels))
                if head is None:
                    head = _labelled_head(index, labels)
            else:
                head = _HEADS[index]
            number = float(value)
            text = repr(number) if -1e6 < number < 1e6 else _go(number)
            columns[index] += f"{head}{tail}{text}\n"

    def status_lines(self, statuses: tuple[str, ...], current: str) -> str:
        if current != self.status:
            line = _LINES[_STATUS].line
            self.status_text = "".join([line(self.tail, (s,), 1.0 if s == current else 0.0) for s in statuses])
            self.status = current
        return self.status_text


class _Registry(Collector):
    """A fixed list of metric families, for handing to prometheus_client's encoders."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class _Forward(Collector):
    """Another registry's metrics, collected as one collector of this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


_EOF = "# EOF\n"


class Exposition:
    """Everything /metrics serves: the fleet families, then the aggregator's own metrics.

    `registry` holds both through prometheus_client's generic path (tests, get_sample_value);
    `render()` writes the same bytes from per-vehicle text caches.
    """

    def __init__(self, fleet: FleetState, geofence: GeofenceMonitor | None = None) -> None:
        self.fleet = fleet
        self.service_registry = CollectorRegistry(auto_describe=False)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(fleet))
        self.geofence = GeofenceCollector(fleet, geofence or GeofenceMonitor())
        self.registry.register(self.geofence)
        self.registry.register(_Forward(self.service_registry))
        # An entry for every vehicle known now (the roster): made at start-up, where the service then moves what
        # exists out of the garbage collector's way (cli._settle_gc), instead of at the first scrape, where 5,000
        # new entries held pushes for ~0.5 s near saturation.
        self._cache: dict[str, _Rendered] = {v.vehicle_id: _Rendered(v, fleet.values_while_offline) for v in fleet}
        self._statuses = fleet.all_statuses
        self._headers: dict[str, tuple[str, ...]] = {}
        self._geofence_headers: dict[str, tuple[str, ...]] = {}
        self._geofence_cache: dict[str, tuple[str, str, str]] = {}

    def render(self, accept: str) -> tuple[bytes, str]:
        """The /metrics body and its content type for this Accept header (one of `FORMATS`, see `negotiate`)."""
        encoder, content_type = negotiate(accept)
        return "".join(self.chunks(encoder, content_type)).encode(), content_type

    def chunks(self, encoder: Encoder, content_type: str) -> Iterator[str]:
        """The /metrics text in order, in pieces. An empty piece is a pause: the vehicles' text is brought up to
        date in slices of `slices.SLICE_S`, and a server runs other work (pushes) at each pause instead of stalling
        for a whole fleet; every piece after the pauses is one whole family. The vehicles and the clock are those
        of the start: a vehicle that pushes during the pauses is rendered as it is when its slice comes."""
        fleet = self.fleet
        if fleet.all_statuses != self._statuses:
            self._cache.clear()
            self._statuses = fleet.all_statuses
        now = fleet.clock.monotonic()
        statuses = self._statuses
        cache = self._cache
        vehicles = list(fleet.exported(now))
        status_column: list[str] = []
        up_column: list[str] = []
        age_column: list[str] = []
        rendered: list[_Rendered] = []
        online = 0
        slices = Slices()
        for v in vehicles:
            entry = cache.get(v.vehicle_id)
            current, up, age = _live(fleet, v, now)
            values = fleet.values_while_offline or up
            if entry is None:
                entry = cache[v.vehicle_id] = _Rendered(v, values)
            elif not entry.current(v, values):
                entry.refresh(v, values)
            online += up
            status_column.append(entry.status_lines(statuses, current))
            up_column.append(entry.up_text[up])
            age_column.append(entry.age_prefix + _number(age) + "\n")
            rendered.append(entry)
            if slices.over():
                yield ""
                slices.restart()
        live = {_STATUS: status_column, _UP: up_column, _HB_AGE: age_column}
        headers = self._family_headers(encoder, content_type)
        for index in range(len(_PER_VEHICLE)):
            if index == len(_FAMILIES):
                yield _without_eof(encoder(_Registry(_fleet_wide(online, len(rendered)))).decode())
            column = live.get(index)
            yield headers[index] + "".join(column if column is not None else [e.columns[index] for e in rendered])
        fence_headers = self._geofence_headers.get(content_type)
        if fence_headers is None:
            fence_headers = tuple(_without_eof(encoder(_Registry([f.empty()])).decode()) for f in _GEOFENCE_HOT)
            self._geofence_headers[content_type] = fence_headers
        yield from self.geofence.chunks(encoder, fence_headers, self._geofence_cache)
        yield encoder(self.service_registry).decode()

    def _family_headers(self, encoder: Encoder, content_type: str) -> tuple[str, ...]:
        """The HELP/TYPE lines of each per-vehicle family, as the chosen encoder writes them (one entry per
        format of `FORMATS`: the cache is bounded by what `negotiate` can answer)."""
        headers = self._headers.get(content_type)
        if headers is None:
            headers = tuple(_without_eof(encoder(_Registry([f.empty()])).decode()) for f in _PER_VEHICLE)
            self._headers[content_type] = headers
        return headers


Encoder = Callable[[Collector], bytes]
TEXT_FORMAT: tuple[Encoder, str] = (generate_text, CONTENT_TYPE_PLAIN_0_0_4)
OPENMETRICS_FORMAT: tuple[Encoder, str] = (generate_openmetrics, CONTENT_TYPE_OPENMETRICS)
FORMATS = (TEXT_FORMAT, OPENMETRICS_FORMAT)
"""What /metrics speaks: the Prometheus text format 0.0.4 and OpenMetrics 1.0.0, nothing else."""


def negotiate(accept: str) -> tuple[Encoder, str]:
    """OpenMetrics 1.0.0 when the Accept header offers `application/openmetrics-text` (whatever version or
    other parameters it adds: Prometheus reads the content type of the answer), else the text format.

    Never fails: any header, however odd, gets one of `FORMATS` (a client choosing the version would otherwise
    choose cache keys, and an unparsable version was a 500)."""
    for offer in accept.split(","):
        media, *params = offer.split(";")
        if media.strip().lower() != "application/openmetrics-text":
            continue
        if not any(_refused(p) for p in params):
            return OPENMETRICS_FORMAT
    return TEXT_FORMAT


def _refused(param: str) -> bool:
    """Whether an Accept parameter is `q=0` (explicitly not acceptable)."""
    name, _, value = param.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value.strip()) == 0.0
    except ValueError:
        return False


def _without_eof(text: str) -> str:
    return text[: -len(_EOF)] if text.endswith(_EOF) else text


def disable_created_series() -> None:
    """Process-wide prometheus_client setting, made once at start-up by the app factory: no `*_created` series
    (they double the output of every counter and histogram, and no rule of ours needs them)."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


REQUEST_DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
_LE = (*map(floatToGoString, REQUEST_DURATION_BUCKETS), "+Inf")
"""The histogram's `le` labels, as prometheus_client writes them."""


class RequestStats(Collector):
    """The RED metrics of every request, kept in plain numbers and exported as prometheus_client would export a
    Counter `http_requests` {method, endpoint, status} and a Histogram `http_request_duration_seconds`
    {endpoint} with REQUEST_DURATION_BUCKETS, label sets in order of first use.

    Only the event loop writes them (and a scrape reads them there), so no lock: prometheus_client's metric
    objects take a lock per increment, bound children included, and the two per request cost more than the rest
    of a push's bookkeeping together (docs/benchmarks.md). The label sets are bounded: the methods, routes and
    statuses the app can answer."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], int] = {}
        self._buckets: dict[str, list[int]] = {}
        """Per endpoint: how many took at most each bound (not cumulative), then how many took longer."""
        self._sums: dict[str, float] = {}

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        key = (method, endpoint, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        buckets = self._buckets.get(endpoint)
        if buckets is None:
            buckets = self._buckets[endpoint] = [0] * (len(REQUEST_DURATION_BUCKETS) + 1)
            self._sums[endpoint] = 0.0
        buckets[bisect.bisect_left(REQUEST_DURATION_BUCKETS, seconds)] += 1  # the first bound >= seconds
        self._sums[endpoint] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "http_requests", "HTTP requests handled.", labels=["method", "endpoint", "status"]
        )
        for (method, endpoint, status), count in list(self._counts.items()):
            requests.add_metric([method, endpoint, str(status)], count)
        yield requests
        duration = HistogramMetricFamily(
            "http_request_duration_seconds", "HTTP request handling time.", labels=["endpoint"]
        )
        for endpoint, buckets in list(self._buckets.items()):
            cumulative = list(itertools.accumulate(buckets))
            duration.add_metric([endpoint], list(zip(_LE, cumulative, strict=True)), self._sums[endpoint])
        yield duration


class PlainCounter(Collector):
    """A counter without labels in a plain number, exported as prometheus_client's Counter of the same name;
    for what every push counts (written on the event loop only: no lock, see RequestStats)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation, self.value = name, documentation, 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


class ServiceMetrics:
    """The aggregator's own RED metrics and ingest/persistence counters, in the app's registry.

    Constructing it changes no process-wide setting; the exported output assumes `disable_created_series()`.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = RequestStats()
        registry.register(self.requests)
        self.received = PlainCounter(
            "telemetry_snapshots_received", "Valid, authorised snapshots received (including retries)."
        )
        registry.register(self.received)
        self.duplicates = Counter(
            "telemetry_snapshots_duplicate",
            "Received snapshots already applied (same or older boot_id/seq), acknowledged and ignored.",
            registry=registry,
        )
        self.rejected = Counter(
            "telemetry_snapshots_rejected", "Pushes refused, by reason.", ["reason"], registry=registry
        )
        for reason in REJECTION_REASONS:  # every reason from 0, so rate() works from the first scrape
            self.rejected.labels(reason)
        self.history_snapshots = Counter(
            "telemetry_history_snapshots",
            "Backlog snapshots received in history batches, by what became of them (docs/history.md).",
            ["outcome"],
            registry=registry,
        )
        for outcome in HISTORY_OUTCOMES:
            self.history_snapshots.labels(outcome)
        self.history_dropped = Counter(
            "telemetry_history_snapshots_dropped",
            "Backlog snapshots not written to history for good, by reason (too_old, future).",
            ["reason"],
            registry=registry,
        )
        for reason in ("too_old", "future"):
            self.history_dropped.labels(reason)
        self.vehicle_log_events = Counter(
            "vehicle_log_events",
            "Vehicle error events written to the events log, by vehicle and level (docs/events.md).",
            ["vehicle_id", "level"],
            registry=registry,
        )
        self.vehicle_log_events_dropped = Counter(
            "vehicle_log_events_dropped",
            "Vehicle error events not written, by reason (rate: the vehicle's per-minute cap; write_failed).",
            ["reason"],
            registry=registry,
        )
        for reason in EVENT_DROP_REASONS:
            self.vehicle_log_events_dropped.labels(reason)
        self.history_samples = Counter(
            "telemetry_history_samples_written", "Samples written to the remote-write endpoint.", registry=registry
        )
        self.remote_write_failures = Counter(
            "telemetry_history_remote_write_failures",
            "Remote writes that failed (unreachable, timeout, refused); the vehicle got 503 and keeps its backlog.",
            registry=registry,
        )
        self.remote_write_duration = Histogram(
            "telemetry_history_remote_write_duration_seconds",
            "Time of one remote write.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
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
        self.connections_open = Gauge(
            "telemetry_connections_open", "Client connections open (TLS handshakes included).", registry=registry
        )
        self.connections_pending = Gauge(
            "telemetry_connections_pending",
            "Open connections that have not yet sent the headers of a first request.",
            registry=registry,
        )
        self.connections_refused = Counter(
            "telemetry_connections_refused",
            "Connections reset at accept (over a cap) or cut before a first request (handshake, header timeout).",
            ["reason"],
            registry=registry,
        )
        for reason in CONNECTION_REFUSAL_REASONS:
            self.connections_refused.labels(reason)
        self.outage_breaches = Counter(
            "geofence_outage_breaches",
            "Geofence breaches that began during a vehicle's link outage, found in its backlog when it arrived.",
            ["kind"],
            registry=registry,
        )
        for kind in ("operating_area", "keep_out"):
            self.outage_breaches.labels(kind)
        self.zone_reloads = Counter(
            "geofence_zones_reloads",
            "Reloads of the geofence zones file, by result (a failure keeps the running zones).",
            ["result"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.zone_reloads.labels(result)
        self.zones_reload_healthy = Gauge(
            "geofence_zones_last_reload_success",
            "1 while the last reload of the zones file succeeded (or none was tried), 0 after a refused one.",
            registry=registry,
        )
        self.zones_reload_healthy.set(1)
        self.build_info = Gauge(
            "telemetry_aggregator_build_info", "Version of the running aggregator.", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count and time one request (http_requests_total, http_request_duration_seconds)."""
        self.requests.observe(method, endpoint, status, seconds)
