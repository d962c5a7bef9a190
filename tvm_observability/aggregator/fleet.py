"""Fleet state: the latest snapshot, liveness and error counters of every vehicle. Pure: clock injected.

Counting model. A vehicle sends, per error code, the cumulative count since its `boot_id`
started. The aggregator keeps, per vehicle, the highest count seen for each of the last few
boots plus a `retired` sum for older boots, so

    vehicle_errors_total = retired + sum(highest count per tracked boot)

never decreases, never double-counts a retry (counts are cumulative, not deltas) and loses
nothing when a push is lost (the next push carries the same events again). Boots are ordered by
first arrival; a push from a retired boot is refused (`stale_boot`), never taken for a new one.

Cardinality: a vehicle gets its own `error_code` series for its first `max_error_code_series - 1`
codes; the events of any later code are counted under `error_code="other"`, so a vehicle that keeps
inventing codes costs one series more, loses no event and is never refused for it. Sensor names
likewise: the first `max_sensor_series` names of a vehicle get a series, later ones are exported as
sensor `other` and counted.

The vehicle's link counters (`LinkReport`: failed pushes, outages, outage seconds) are cumulative per boot too and
follow the same model: highest value per tracked boot (`BootRecord.link`) plus a retired sum (`link_retired`).

What survives a restart, and how, is state_image.py's business; this module does no I/O and no encoding.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from ..errors import StaleBoot, TooManyVehicles
from ..model import (
    DEFAULT_VEHICLE_STATUSES,
    LINK_COUNTERS,
    OFFLINE_STATUS,
    OVERFLOW_ERROR_CODE,
    SENSOR_STATUSES,
    UNKNOWN_STATUS,
    SensorReport,
    VehicleSnapshot,
)

TRACKED_BOOTS = 4
"""Boots whose counts stay separately updatable (a late push from a previous boot still counts)."""
RETIRED_BOOT_IDS = 32
"""Ids of boots no longer tracked remembered per vehicle, so that a push from one is refused (`stale_boot`)
instead of being taken for a new boot (decision record 0002: boots are ordered by first arrival)."""
MAX_CODES_PER_BOOT = 1024
"""Distinct codes remembered per boot (for the cumulative max); the events of codes past this are counted under
`other` (`BootRecord.overflow`)."""
STORED_BODY_MAX = 4096
"""Pushes up to this size are kept as received for the state file; larger ones (padded with unknown
fields) are dropped and the snapshot re-encoded when the state is saved, so memory per vehicle stays bounded."""
OVERFLOW_SENSOR = "other"
"""The sensor label under which a vehicle's sensors past its sensor-name budget are exported (worst status)."""
_SEVERITY = {status: rank for rank, status in enumerate(SENSOR_STATUSES)}


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks: monotonic for ages, wall time for timestamps."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class Outcome(str, Enum):
    """What `FleetState.apply` did with a valid snapshot."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    """Same or older (boot_id, seq) than already applied: acknowledged, ignored."""
    PREVIOUS_BOOT = "previous_boot"
    """A late push from an earlier boot: its error counts are merged, the live state is not touched."""


@dataclass(slots=True)
class BootRecord:
    seq: int
    errors: dict[str, int] = field(default_factory=dict)
    """Highest count seen per code, for at most MAX_CODES_PER_BOOT codes."""
    overflow: int = 0
    """Events of the codes past MAX_CODES_PER_BOOT: the highest sum seen in one push (counts are cumulative, so
    that is exact for a vehicle that sends all its codes in every push, and never counts an event twice)."""
    history_seq: int = 0
    """The highest seq of this boot written to history (decision 0003's watermark): backlog items at or below it
    are acknowledged without being written again. 0: nothing written."""
    event_seq: int = 0
    """The highest event_seq of this boot handled by the event log (decision 0003's event watermark): events at
    or below it are not written again. 0: none."""
    link: dict[str, float] = field(default_factory=dict)
    """Highest value seen per link counter (model.LINK_COUNTERS); empty while the boot reported no link view."""


@dataclass(slots=True)
class VehicleState:
    """Everything the aggregator knows of one vehicle."""

    vehicle_id: str
    on_roster: bool
    snapshot: VehicleSnapshot | None = None
    snapshot_body: bytes | None = None
    """The msgpack form of `snapshot` as received, kept for the state file (None: encode it when saving)."""
    boots: OrderedDict[str, BootRecord] = field(default_factory=OrderedDict)
    retired: dict[str, int] = field(default_factory=dict)
    """Summed counts of boots no longer tracked, keyed by exported code."""
    retired_boots: dict[str, None] = field(default_factory=dict)
    """Ids of the last RETIRED_BOOT_IDS boots no longer tracked, oldest first (an ordered set)."""
    codes: dict[str, None] = field(default_factory=dict)
    """Codes with a series of their own, in order of first appearance (an ordered set)."""
    errors_total: dict[str, int] = field(default_factory=dict)
    link_retired: dict[str, float] = field(default_factory=dict)
    """Summed link counters of boots no longer tracked."""
    link_total: dict[str, float] = field(default_factory=dict)
    """Per link counter, across boots (like `errors_total`); empty while the vehicle never reported its link."""
    sensor_names: dict[str, None] = field(default_factory=dict)
    """Sensor names with a series of their own, in order of first appearance (an ordered set)."""
    sensors: Mapping[str, SensorReport] = field(default_factory=dict)
    """The last snapshot's sensors as exported: names past the budget folded into OVERFLOW_SENSOR."""
    sensors_folded: int = 0
    """Sensor reports folded into OVERFLOW_SENSOR because their name was past the budget (one per push)."""
    heartbeat_monotonic: float | None = None
    heartbeat_wall: float | None = None
    restarts: int = 0
    clock_skew_s: float | None = None
    version: int = 0
    """Bumped on every change, so caches of rendered values know when to refresh."""

    @property
    def boot_id(self) -> str | None:
        return next(reversed(self.boots)) if self.boots else None

    def heartbeat_age(self, now_monotonic: float) -> float:
        """Seconds since the last accepted snapshot; +Inf if never heard from."""
        if self.heartbeat_monotonic is None:
            return float("inf")
        return max(0.0, now_monotonic - self.heartbeat_monotonic)

    def exported_code(self, code: str) -> str:
        """The error_code label a vehicle's code is counted under."""
        return code if code in self.codes else OVERFLOW_ERROR_CODE

    def recount(self) -> None:
        """Derive `errors_total` and `link_total` from the retired sums and the tracked boots."""
        totals, link = dict(self.retired), dict(self.link_retired)
        for record in self.boots.values():
            self.add_counts(record, totals, link)
        self.errors_total, self.link_total = totals, link

    def retire(self, boot_id: str, record: BootRecord) -> None:
        """Fold a boot no longer tracked into the retired sums, and remember its id."""
        self.add_counts(record, self.retired, self.link_retired)
        self.retired_boots[boot_id] = None
        while len(self.retired_boots) > RETIRED_BOOT_IDS:
            del self.retired_boots[next(iter(self.retired_boots))]

    def add_counts(self, record: BootRecord, totals: dict[str, int], link: dict[str, float]) -> None:
        """Add one boot's counts to `totals`, keyed by exported code, and its link counters to `link`."""
        for name, value in record.link.items():
            link[name] = link.get(name, 0.0) + value
        for code, count in record.errors.items():
            key = self.exported_code(code)
            totals[key] = totals.get(key, 0) + count
        if record.overflow:
            totals[OVERFLOW_ERROR_CODE] = totals.get(OVERFLOW_ERROR_CODE, 0) + record.overflow


def fold_sensors(
    names: dict[str, None], sensors: Mapping[str, SensorReport], budget: int
) -> tuple[Mapping[str, SensorReport], int]:
    """The sensors to export and how many were folded: a name keeps its own series if it has one or the budget
    (`names`, updated here) still has room; the others are exported as OVERFLOW_SENSOR, the worst status winning."""
    if all(name in names for name in sensors):  # the usual push: the same sensors as before
        return sensors, 0
    view: dict[str, SensorReport] = {}
    worst: SensorReport | None = None
    folded = 0
    for name, report in sensors.items():
        if name != OVERFLOW_SENSOR and (name in names or len(names) < budget):
            names[name] = None
            view[name] = report
            continue
        folded += name != OVERFLOW_SENSOR  # a vehicle's own "other" shares the series without being folded
        if worst is None or _SEVERITY[report.status] > _SEVERITY[worst.status]:
            worst = report
    if worst is not None:
        view[OVERFLOW_SENSOR] = worst
    return view, folded


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """What the fleet state takes from the configuration: derived from it in one place and applied by
    `FleetState` at construction and on every reload."""

    statuses: tuple[str, ...] = DEFAULT_VEHICLE_STATUSES
    offline_after_s: float = 15.0
    max_error_code_series: int = 64
    """Error-code series per vehicle, `other` included: later codes are counted under `other`."""
    max_unknown_vehicles: int = 1000
    """Vehicles outside the roster tracked at once; 0 refuses them."""
    max_sensor_series: int = 64
    """Sensor names per vehicle with a series of their own, over the vehicle's lifetime: later names are
    exported as sensor `other` (worst status) and counted in `sensors_folded`."""
    owned: frozenset[str] | None = None
    """The vehicles this aggregator's shard owns (shards.py); None: not sharded, every vehicle is its own. A
    vehicle it does not own is exported only while it is online here (pushed to it), never as offline."""
    values_while_offline: bool = True
    """Export an offline vehicle's last values (battery, position, pose, sensors). False while history is written
    to Prometheus: a stale value scraped during an outage would sit between the backfilled ones (docs/history.md)."""


class FleetState:
    """All vehicles, keyed by id. Roster vehicles exist from construction, so they are never absent."""

    def __init__(
        self, roster: Iterable[str], settings: FleetSettings | None = None, *, clock: Clock | None = None
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.settings = FleetSettings()
        self._apply_settings(settings or FleetSettings())
        self._vehicles: dict[str, VehicleState] = {vid: VehicleState(vid, on_roster=True) for vid in roster}
        self._unknown_count = 0
        self.dirty = False
        """Set by every change; the persistence task clears it after saving."""

    def _apply_settings(self, settings: FleetSettings) -> None:
        """The one place settings take effect, at construction and on reload."""
        self.settings = settings
        self.statuses: tuple[str, ...] = settings.statuses
        self.all_statuses: tuple[str, ...] = (*settings.statuses, UNKNOWN_STATUS, OFFLINE_STATUS)
        self._known_statuses = frozenset(settings.statuses)
        self.offline_after_s = settings.offline_after_s
        self.max_error_codes = settings.max_error_code_series
        self.max_unknown = settings.max_unknown_vehicles
        self.values_while_offline = settings.values_while_offline

    def __len__(self) -> int:
        return len(self._vehicles)

    def __iter__(self) -> Iterator[VehicleState]:
        return iter(self._vehicles.values())

    def get(self, vehicle_id: str) -> VehicleState | None:
        return self._vehicles.get(vehicle_id)

    def apply(self, snap: VehicleSnapshot, body: bytes | None = None) -> Outcome:
        """Fold one validated, authorised snapshot (and the body it was decoded from) into the state:
        admit the vehicle, place the push among its boots, merge its counts, take its live values.

        Raises TooManyVehicles (one unknown vehicle too many) or StaleBoot (a retired boot), leaving the state
        untouched.
        """
        vehicle = self._admit(snap.vehicle_id)
        record = self._boot_record(vehicle, snap)
        if record is None:
            return Outcome.DUPLICATE
        record.seq = snap.seq
        self._merge_counts(vehicle, record, snap)
        vehicle.version += 1
        self.dirty = True
        if vehicle.boot_id != snap.boot_id:
            return Outcome.PREVIOUS_BOOT
        self._take_live_values(vehicle, snap, body)
        return Outcome.ACCEPTED

    def _admit(self, vehicle_id: str) -> VehicleState:
        """The vehicle's state; a vehicle outside the roster is added while there is room for one more."""
        vehicle = self._vehicles.get(vehicle_id)
        if vehicle is not None:
            return vehicle
        if self._unknown_count >= self.max_unknown:
            raise TooManyVehicles(f"already tracking {self.max_unknown} vehicles outside the roster")
        vehicle = self._vehicles[vehicle_id] = VehicleState(vehicle_id, on_roster=False)
        self._unknown_count += 1
        return vehicle

    @staticmethod
    def _boot_record(vehicle: VehicleState, snap: VehicleSnapshot) -> BootRecord | None:
        """The record of the push's boot, None for a duplicate. A boot not seen before starts a record (the newest
        boot, by arrival) and retires the oldest tracked boot beyond TRACKED_BOOTS."""
        record = vehicle.boots.get(snap.boot_id)
        if record is not None:
            return None if snap.seq <= record.seq else record
        if snap.boot_id in vehicle.retired_boots:
            raise StaleBoot(
                f"boot {snap.boot_id} of {snap.vehicle_id} is older than the {TRACKED_BOOTS} boots tracked; "
                "its counts are already included"
            )
        if vehicle.boots:
            vehicle.restarts += 1
        record = vehicle.boots[snap.boot_id] = BootRecord(seq=snap.seq)
        while len(vehicle.boots) > TRACKED_BOOTS:
            vehicle.retire(*vehicle.boots.popitem(last=False))
        return record

    def _merge_counts(self, vehicle: VehicleState, record: BootRecord, snap: VehicleSnapshot) -> None:
        """Keep the highest cumulative count per code (and link counter) of this boot; give new codes a series while
        the budget lasts."""
        overflow = 0
        changed = False
        for code, count in snap.errors.items():
            if code not in record.errors and len(record.errors) >= MAX_CODES_PER_BOOT:
                overflow += count
                continue
            if count > record.errors.get(code, -1):
                record.errors[code] = count
                changed = True
            if (
                code not in vehicle.codes
                and code != OVERFLOW_ERROR_CODE
                and len(vehicle.codes) < self.max_error_codes - 1
            ):
                vehicle.codes[code] = None
                changed = True
        if overflow > record.overflow:
            record.overflow = overflow
            changed = True
        if snap.link is not None:
            for name in LINK_COUNTERS:
                value = float(getattr(snap.link, name))
                if value > record.link.get(name, 0.0) or name not in record.link:
                    record.link[name] = value
                    changed = True
        if changed:  # the usual push repeats its counts: nothing to derive again
            vehicle.recount()

    def _take_live_values(self, vehicle: VehicleState, snap: VehicleSnapshot, body: bytes | None) -> None:
        """The push of the current boot: its values become the vehicle's, and it is the new heartbeat."""
        vehicle.snapshot = snap
        vehicle.snapshot_body = body if body is not None and len(body) <= STORED_BODY_MAX else None
        vehicle.sensors, folded = fold_sensors(vehicle.sensor_names, snap.sensors, self.settings.max_sensor_series)
        vehicle.sensors_folded += folded
        vehicle.heartbeat_monotonic = self.clock.monotonic()
        vehicle.heartbeat_wall = self.clock.time()
        vehicle.clock_skew_s = snap.sent_at - vehicle.heartbeat_wall

    def merge_history(self, snap: VehicleSnapshot) -> BootRecord | None:
        """Fold a backlog snapshot's counts into its boot (history.py): never its live values, heartbeat or the
        boot's live seq. The boot's record, None when the snapshot needs nothing more (already written to
        history, or of a boot retired since, whose counts are in the retired sum). A boot not seen live is placed
        by the vehicle's own clock: one that began before the last live snapshot (it ended during the outage) is
        tracked as the newest-but-one, so the live boot stays current; a later one (the bridge restarted during
        the outage, its backlog arrived before its first live push) becomes the current boot, whose live pushes
        are then taken as live."""
        vehicle = self._admit(snap.vehicle_id)
        record = vehicle.boots.get(snap.boot_id)
        if record is None:
            if snap.boot_id in vehicle.retired_boots:
                return None
            current, last = vehicle.boot_id, vehicle.snapshot
            record = self._boot_record(vehicle, snap)
            assert record is not None
            if current is not None and current in vehicle.boots and (last is None or snap.sent_at < last.sent_at):
                vehicle.boots.move_to_end(current)
            record.seq = 0  # no live push of it seen: live pushes of it (none will come) are not duplicates
        elif snap.seq <= record.history_seq:
            return None
        self._merge_counts(vehicle, record, snap)
        vehicle.version += 1
        self.dirty = True
        return record

    def is_online(self, vehicle: VehicleState, now_monotonic: float) -> bool:
        return vehicle.heartbeat_age(now_monotonic) <= self.offline_after_s

    def status_of(self, vehicle: VehicleState, now_monotonic: float) -> str:
        """The one status exported as 1: offline, the reported status, or unknown."""
        if not self.is_online(vehicle, now_monotonic):
            return OFFLINE_STATUS
        reported = vehicle.snapshot.status if vehicle.snapshot else None
        return reported if reported in self._known_statuses else UNKNOWN_STATUS

    def is_known_status(self, status: str | None) -> bool:
        return status is None or status in self._known_statuses

    def online_count(self, now_monotonic: float) -> int:
        return sum(1 for v in self._vehicles.values() if self.is_online(v, now_monotonic))

    def exported(self, now_monotonic: float) -> Iterator[VehicleState]:
        """The vehicles this aggregator reports: all of them unless sharded; sharded, the ones its shard owns and
        any other only while it is online here (a vehicle moved to or misrouted to this shard)."""
        owned = self.settings.owned
        if owned is None:
            return iter(self._vehicles.values())
        return (v for v in self._vehicles.values() if v.vehicle_id in owned or self.is_online(v, now_monotonic))

    def reconfigure(self, roster: Iterable[str], settings: FleetSettings) -> tuple[list[str], list[str]]:
        """Apply a reloaded config: returns (vehicles added to the roster, vehicles dropped from it).

        A dropped vehicle stays, as an unknown vehicle, while unknown vehicles are allowed (max_unknown_vehicles
        > 0); otherwise it is forgotten with its counters, as an operator retiring it expects.
        """
        wanted = set(roster)
        added = sorted(wanted - {v.vehicle_id for v in self._vehicles.values() if v.on_roster})
        dropped = sorted(v.vehicle_id for v in self._vehicles.values() if v.on_roster and v.vehicle_id not in wanted)
        self._apply_settings(settings)
        for vid in added:
            vehicle = self._vehicles.get(vid)
            if vehicle is None:
                self._vehicles[vid] = VehicleState(vid, on_roster=True)
            else:
                vehicle.on_roster = True
                self._unknown_count -= 1
        for vid in dropped:
            if self.max_unknown > 0:
                self._vehicles[vid].on_roster = False
                self._unknown_count += 1
            else:
                del self._vehicles[vid]
        for vehicle in self._vehicles.values():
            vehicle.version += 1  # statuses or roster flags may render differently now
        self.dirty = True
        return added, dropped

    def adopt(self, restored: Iterable[VehicleState], *, keep_unknown: bool) -> list[str]:
        """Take vehicles restored from the state file (state_image.py) in place of the ones known; returns the ids
        skipped (not on the roster while unknown vehicles are refused, or past max_unknown_vehicles).

        Ages restart from the saved wall-clock heartbeat: the monotonic clock of the previous process is gone."""
        now_mono, now_wall = self.clock.monotonic(), self.clock.time()
        skipped: list[str] = []
        for vehicle in restored:
            known = self._vehicles.get(vehicle.vehicle_id)
            if known is None:
                if not keep_unknown or self._unknown_count >= self.max_unknown:
                    skipped.append(vehicle.vehicle_id)
                    continue
                self._unknown_count += 1
            vehicle.on_roster = known is not None and known.on_roster
            if vehicle.heartbeat_wall is not None:
                vehicle.heartbeat_monotonic = now_mono - max(0.0, now_wall - vehicle.heartbeat_wall)
            if vehicle.snapshot is not None:
                vehicle.sensors, _ = fold_sensors(
                    vehicle.sensor_names, vehicle.snapshot.sensors, self.settings.max_sensor_series
                )
            vehicle.recount()
            vehicle.version = (known.version if known is not None else 0) + 1
            self._vehicles[vehicle.vehicle_id] = vehicle
        return skipped
