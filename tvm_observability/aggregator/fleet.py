"""Fleet state: the latest snapshot, liveness and error counters of every vehicle. Pure: clock injected.

Counting model. A vehicle sends, per error code, the cumulative count since its `boot_id`
started. The aggregator keeps, per vehicle, the highest count seen for each of the last few
boots plus a `retired` sum for older boots, so

    vehicle_errors_total = retired + sum(highest count per tracked boot)

never decreases, never double-counts a retry (counts are cumulative, not deltas) and loses
nothing when a push is lost (the next push carries the same events again).

Cardinality: a vehicle gets its own `error_code` series for its first `max_error_codes_per_vehicle - 1`
codes; the events of any later code are counted under `error_code="other"`, so a vehicle that keeps
inventing codes costs one series more, loses no event and is never refused for it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from .. import codec
from ..errors import LimitExceeded
from ..model import DEFAULT_VEHICLE_STATUSES, OFFLINE_STATUS, OVERFLOW_ERROR_CODE, UNKNOWN_STATUS, VehicleSnapshot
from .ingest import IngestLimits, parse_snapshot

TRACKED_BOOTS = 4
MAX_CODES_PER_BOOT = 1024
"""Distinct codes remembered per boot (for the cumulative max); events of codes past this are ignored."""
"""Boots whose counts stay separately updatable (a late push from a previous boot still counts)."""

STATE_FORMAT = 2
STORED_BODY_MAX = 4096
"""Pushes up to this size are kept as received for the state file; larger ones (padded with unknown
fields) are re-encoded, so memory per vehicle stays bounded."""
_TRUSTED_LIMITS = IngestLimits(max_sensors=2**31, max_error_codes=2**31)
"""Saved snapshots passed the configured limits when they arrived; limits may have shrunk since."""


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


@dataclass(slots=True)
class VehicleState:
    """Everything the aggregator knows of one vehicle."""

    vehicle_id: str
    on_roster: bool
    snapshot: VehicleSnapshot | None = None
    snapshot_body: bytes | None = None
    """The msgpack form of `snapshot`, kept for the state file."""
    boots: OrderedDict[str, BootRecord] = field(default_factory=OrderedDict)
    retired: dict[str, int] = field(default_factory=dict)
    """Summed counts of boots no longer tracked, keyed by exported code."""
    codes: dict[str, None] = field(default_factory=dict)
    """Codes with a series of their own, in order of first appearance (an ordered set)."""
    errors_total: dict[str, int] = field(default_factory=dict)
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

    def _recount(self) -> None:
        totals = dict(self.retired)
        for record in self.boots.values():
            for code, count in record.errors.items():
                key = self.exported_code(code)
                totals[key] = totals.get(key, 0) + count
        self.errors_total = totals


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
    """Distinct sensor names a vehicle may introduce over time, each a `sensor` series."""


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

    def __len__(self) -> int:
        return len(self._vehicles)

    def __iter__(self) -> Iterator[VehicleState]:
        return iter(self._vehicles.values())

    def get(self, vehicle_id: str) -> VehicleState | None:
        return self._vehicles.get(vehicle_id)

    def apply(self, snap: VehicleSnapshot, body: bytes | None = None) -> Outcome:
        """Fold one validated, authorised snapshot (and the body it was decoded from) into the state.

        Raises LimitExceeded, leaving the state untouched, when the vehicle would be one unknown
        vehicle too many.
        """
        vehicle = self._vehicles.get(snap.vehicle_id)
        if vehicle is None and self._unknown_count >= self.max_unknown:
            raise LimitExceeded(
                f"already tracking {self.max_unknown} vehicles outside the roster", reason="limit_vehicles"
            )
        if vehicle is None:
            vehicle = VehicleState(snap.vehicle_id, on_roster=False)
            self._vehicles[snap.vehicle_id] = vehicle
            self._unknown_count += 1

        record = vehicle.boots.get(snap.boot_id)
        if record is not None and snap.seq <= record.seq:
            return Outcome.DUPLICATE
        current = vehicle.boot_id
        if record is None:
            record = BootRecord(seq=snap.seq)
            vehicle.boots[snap.boot_id] = record
            if current is not None:
                vehicle.restarts += 1
            while len(vehicle.boots) > TRACKED_BOOTS:
                _, oldest = vehicle.boots.popitem(last=False)
                for code, count in oldest.errors.items():
                    key = vehicle.exported_code(code)
                    vehicle.retired[key] = vehicle.retired.get(key, 0) + count
        record.seq = snap.seq
        for code, count in snap.errors.items():
            if (
                code not in vehicle.codes
                and code != OVERFLOW_ERROR_CODE
                and len(vehicle.codes) < self.max_error_codes - 1
            ):
                vehicle.codes[code] = None
            if code in record.errors or len(record.errors) < MAX_CODES_PER_BOOT:
                record.errors[code] = max(count, record.errors.get(code, 0))
        vehicle._recount()
        vehicle.version += 1
        self.dirty = True
        if vehicle.boot_id != snap.boot_id:
            return Outcome.PREVIOUS_BOOT
        vehicle.snapshot = snap
        vehicle.snapshot_body = body if body is not None and len(body) <= STORED_BODY_MAX else codec.encode(snap)
        vehicle.heartbeat_monotonic = self.clock.monotonic()
        vehicle.heartbeat_wall = self.clock.time()
        vehicle.clock_skew_s = snap.sent_at - vehicle.heartbeat_wall
        return Outcome.ACCEPTED

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

    # -- persistence -------------------------------------------------------------------------

    def to_image(self) -> dict[str, Any]:
        """A plain image of what must survive a restart (counters, boots, last snapshot as msgpack bytes).

        Built from copies, so it can be serialised in another thread while the state changes."""
        return {**self.image_header(), "vehicles": dict(self.vehicle_images())}

    def image_header(self) -> dict[str, Any]:
        """The image's entries other than "vehicles"."""
        return {"format": STATE_FORMAT, "saved_at": self.clock.time()}

    def vehicle_images(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The image's "vehicles" entries, one at a time, over a copy of the vehicle list: the caller may let the
        state change between two (a vehicle changed after its entry was taken leaves the state dirty)."""
        for v in list(self._vehicles.values()):
            if v.boots or v.retired:
                yield (
                    v.vehicle_id,
                    {
                        "boots": [{"boot_id": b, "seq": r.seq, "errors": dict(r.errors)} for b, r in v.boots.items()],
                        "retired": dict(v.retired),
                        "codes": list(v.codes),
                        "heartbeat_wall": v.heartbeat_wall,
                        "restarts": v.restarts,
                        "snapshot": v.snapshot_body,
                    },
                )

    def restore(self, image: Mapping[str, Any], *, keep_unknown: bool) -> list[str]:
        """Load a `to_image` image; returns the ids skipped (not on the roster while unknowns are refused).

        The whole image is checked before anything is applied: a structurally broken one raises
        ValueError (or KeyError/TypeError) and leaves the state as it was.
        """
        if image.get("format") != STATE_FORMAT:
            raise ValueError(f"state format {image.get('format')!r} is not {STATE_FORMAT}")
        prepared = [(str(vid), _restored_vehicle(str(vid), saved)) for vid, saved in image["vehicles"].items()]
        now_mono, now_wall = self.clock.monotonic(), self.clock.time()
        skipped: list[str] = []
        for vid, restored in prepared:
            vehicle = self._vehicles.get(vid)
            if vehicle is None:
                if not keep_unknown or self._unknown_count >= self.max_unknown:
                    skipped.append(vid)
                    continue
                self._unknown_count += 1
            else:
                restored.on_roster = True
            if restored.heartbeat_wall is not None:
                restored.heartbeat_monotonic = now_mono - max(0.0, now_wall - restored.heartbeat_wall)
            self._vehicles[vid] = restored
        return skipped


def _restored_vehicle(vehicle_id: str, saved: Mapping[str, Any]) -> VehicleState:
    vehicle = VehicleState(vehicle_id, on_roster=False)
    vehicle.boots = OrderedDict(
        (str(b["boot_id"]), BootRecord(int(b["seq"]), _counts(b["errors"]))) for b in saved["boots"]
    )
    vehicle.retired = _counts(saved["retired"])
    vehicle.codes = dict.fromkeys(str(code) for code in saved["codes"])
    vehicle.restarts = int(saved["restarts"])
    if saved["heartbeat_wall"] is not None:
        vehicle.heartbeat_wall = float(saved["heartbeat_wall"])
    if saved["snapshot"] is not None:
        vehicle.snapshot_body = bytes(saved["snapshot"])
        vehicle.snapshot = parse_snapshot(codec.decode(vehicle.snapshot_body), _TRUSTED_LIMITS)
        if vehicle.snapshot.vehicle_id != vehicle_id:
            raise ValueError(f"saved snapshot of {vehicle.snapshot.vehicle_id} filed under {vehicle_id}")
    vehicle._recount()
    vehicle.version = 1
    return vehicle


def _counts(raw: Mapping[str, Any]) -> dict[str, int]:
    counts = {str(code): int(count) for code, count in raw.items()}
    if any(count < 0 for count in counts.values()):
        raise ValueError("negative error count in state image")
    return counts
