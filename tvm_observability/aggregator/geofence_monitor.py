"""Each vehicle's geofence status over time: evaluated on every accepted snapshot, aged at every read. Pure
(the clock is passed in), no I/O.

A verdict holds while its fix is younger than `max_fix_age_s` (the fix's age on the vehicle when sent plus the
time since the push); after that the status is `unknown`, never a violation the vehicle may have left. What
stays is the *last known violation*: set by a fresh fix that violates, cleared only by a fresh fix that does
not. A vehicle that goes silent (or loses its fix) in a keep-out zone keeps it, so an alert can page on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..model import VehicleSnapshot
from .geofence import (
    NO_ZONES,
    OUTSIDE_OPERATING_AREA,
    UNKNOWN_VERDICT,
    ZONE_KINDS,
    GeofenceSettings,
    Verdict,
    Zones,
    area_distance,
    evaluate,
    meters_per_degree,
)

FAR_FROM_AREA_M = 100_000.0
"""A vehicle this far outside an operating area that applies to it suggests a zone in the wrong place (a file
in [latitude, longitude] order lands thousands of kilometres away): warned once per area and zones load."""


@dataclass(slots=True)
class Track:
    verdict: Verdict
    fix_at: float | None
    """Monotonic time the evaluated fix was taken (None: the last snapshot had no usable fix)."""
    position: tuple[float, float] | None
    """(longitude, latitude) of the last usable fix."""
    accuracy_m: float | None
    last_violation: Verdict | None
    distance: tuple[float | None] | None = None
    """The signed distance to the nearest operating area at `position`, once asked for (it is not needed to
    decide, so it is computed at scrape time, at most once per fix)."""


@dataclass(frozen=True, slots=True)
class FarArea:
    """A warning: `vehicle_id` was evaluated `distance_m` outside operating area `zone`."""

    zone: str
    vehicle_id: str
    distance_m: float


@dataclass(frozen=True, slots=True)
class Breach:
    """A violation that began while the vehicle could not report it live: the first fix of the run, from its backlog."""

    vehicle_id: str
    boot_id: str
    seq: int
    sent_at: float
    """On the vehicle's clock."""
    verdict: Verdict
    position: tuple[float, float]
    """(longitude, latitude)."""


class GeofenceMonitor:
    """Verdicts per vehicle against the zones in force; `enabled` is False while geofencing is off (no settings)."""

    def __init__(self, zones: Zones = NO_ZONES, settings: GeofenceSettings | None = None) -> None:
        self.zones = zones
        self.settings = settings or GeofenceSettings()
        self.enabled = settings is not None
        self.tracks: dict[str, Track] = {}
        self._warned: set[str] = set()

    def reconfigure(self, zones: Zones, settings: GeofenceSettings | None) -> None:
        """New zones or settings (None: geofencing off): every vehicle's last fix is judged again against new
        zones, without hysteresis."""
        changed = zones != self.zones
        self.zones, self.settings, self.enabled = zones, settings or GeofenceSettings(), settings is not None
        if changed:
            self._warned.clear()
            for vehicle_id, track in self.tracks.items():
                track.distance = None
                if track.position is not None:
                    track.verdict = self._judge(vehicle_id, track.position, track.accuracy_m, None)
                    track.last_violation = track.verdict if track.verdict.violation else None

    def observe(self, snapshot: VehicleSnapshot, now: float) -> list[FarArea]:
        """Judge an accepted snapshot's fix at monotonic time `now`; returns new far-from-area warnings."""
        if not self.enabled:
            return []
        vehicle_id = snapshot.vehicle_id
        track = self.tracks.get(vehicle_id)
        p = snapshot.position
        usable = (
            p is not None
            and p.fix
            and p.longitude is not None
            and p.latitude is not None
            and p.age_s <= self.settings.max_fix_age_s
            and (p.accuracy_m is None or p.accuracy_m <= self.settings.max_accuracy_m)
        )
        if not usable or p is None or p.longitude is None or p.latitude is None:
            if track is None:
                self.tracks[vehicle_id] = Track(UNKNOWN_VERDICT, None, None, None, None)
            else:
                track.verdict, track.fix_at = UNKNOWN_VERDICT, None
            return []
        position = (p.longitude, p.latitude)
        previous = track.verdict if track is not None and track.verdict is not UNKNOWN_VERDICT else None
        verdict = self._judge(vehicle_id, position, p.accuracy_m, previous)
        last_violation = verdict if verdict.violation else None
        self.tracks[vehicle_id] = Track(verdict, now - p.age_s, position, p.accuracy_m, last_violation)
        return self._far(vehicle_id, verdict, now)

    def breaches(self, snapshots: Iterable[VehicleSnapshot]) -> list[Breach]:
        """The violations a backlog (one vehicle's journalled snapshots, oldest first) shows: the first fix of each
        run of violating fixes, judged with the same margin and hysteresis as live pushes. Live verdicts and
        tracks are not touched: the outage is history, the vehicle's present is its live pushes."""
        if not self.enabled:
            return []
        found: list[Breach] = []
        previous: Verdict | None = None
        for snapshot, position, accuracy_m in self._judgeable(snapshots):
            verdict = self._judge(snapshot.vehicle_id, position, accuracy_m, previous)
            began = verdict.violation and (previous is None or previous.status != verdict.status)
            if began:
                found.append(
                    Breach(snapshot.vehicle_id, snapshot.boot_id, snapshot.seq, snapshot.sent_at, verdict, position)
                )
            previous = verdict
        return found

    def recall(self, snapshots: Iterable[VehicleSnapshot]) -> None:
        """At start-up, from the restored state: judge each vehicle's last known fix, however old, so that a
        violation there stays known across an aggregator restart (the status stays `unknown`: the fix is old)."""
        if not self.enabled:
            return
        for snapshot, position, accuracy_m in self._judgeable(snapshots):
            verdict = self._judge(snapshot.vehicle_id, position, accuracy_m, None)
            last = verdict if verdict.violation else None
            self.tracks[snapshot.vehicle_id] = Track(UNKNOWN_VERDICT, None, position, accuracy_m, last)

    def _judgeable(
        self, snapshots: Iterable[VehicleSnapshot]
    ) -> Iterator[tuple[VehicleSnapshot, tuple[float, float], float | None]]:
        """The snapshots whose fix may be judged whatever its age (a backlog, a restored last fix): a fix with
        coordinates, accurate enough; with its (longitude, latitude) and accuracy."""
        for snapshot in snapshots:
            p = snapshot.position
            if p is None or not p.fix or p.longitude is None or p.latitude is None:
                continue
            if p.accuracy_m is not None and p.accuracy_m > self.settings.max_accuracy_m:
                continue
            yield snapshot, (p.longitude, p.latitude), p.accuracy_m

    def _judge(
        self, vehicle_id: str, position: tuple[float, float], accuracy_m: float | None, previous: Verdict | None
    ) -> Verdict:
        lon, lat = position
        return evaluate(
            self.zones, vehicle_id, lon, lat, margin_m=self.settings.margin_m, accuracy_m=accuracy_m, previous=previous
        )

    def _far(self, vehicle_id: str, verdict: Verdict, now: float) -> list[FarArea]:
        """Outside an area that is not yet warned about: how far (computed only then)."""
        if verdict.status != OUTSIDE_OPERATING_AREA or verdict.zone is None or verdict.zone in self._warned:
            return []
        distance = self.boundary_distance_m(vehicle_id, now)
        if distance is None or -distance < FAR_FROM_AREA_M:
            return []
        self._warned.add(verdict.zone)
        return [FarArea(verdict.zone, vehicle_id, -distance)]

    def status(self, vehicle_id: str, now: float) -> Verdict:
        """The vehicle's verdict at monotonic time `now`: `unknown` once its fix is older than the age limit."""
        track = self.tracks.get(vehicle_id)
        if track is None or track.fix_at is None or now - track.fix_at > self.settings.max_fix_age_s:
            return UNKNOWN_VERDICT
        return track.verdict

    def boundary_distance_m(self, vehicle_id: str, now: float) -> float | None:
        """Signed meters from the vehicle's fix to the nearest applicable operating area's boundary (positive
        inside); None while the status is unknown or no operating area applies."""
        track = self.tracks.get(vehicle_id)
        if track is None or track.position is None or self.status(vehicle_id, now) is UNKNOWN_VERDICT:
            return None
        if track.distance is None:
            lon, lat = track.position
            areas = self.zones.applicable(vehicle_id)[0]
            track.distance = (area_distance(areas, lon, lat, meters_per_degree(lat))[0],)
        return track.distance[0]

    def last_violation(self, vehicle_id: str) -> Verdict | None:
        """The violation at the vehicle's last usable fix, however old; None once a fresh fix is fine."""
        track = self.tracks.get(vehicle_id)
        return None if track is None else track.last_violation

    def position(self, vehicle_id: str) -> tuple[float, float] | None:
        track = self.tracks.get(vehicle_id)
        return None if track is None else track.position

    def retain(self, vehicle_ids: set[str]) -> None:
        """Forget the vehicles that left the fleet."""
        for vehicle_id in [v for v in self.tracks if v not in vehicle_ids]:
            del self.tracks[vehicle_id]

    def zone_counts(self) -> dict[str, int]:
        return {kind: self.zones.count(kind) for kind in ZONE_KINDS}
