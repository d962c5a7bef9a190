"""Backlog snapshots -> the remote-write series that fill an outage in. Pure: no I/O.

Each snapshot's values become samples of the same series /metrics exports (collector.value_samples: the same
names and labels, sensors folded into the vehicle's sensor-name budget) plus the scrape's `job` and `instance`
(configured: relabelling makes them impossible to derive), at the time the vehicle measured them on the
aggregator's clock: `sent_at` minus the clock skew last seen for the vehicle. Counters and liveness are not
backfilled (docs/history.md). A snapshot older than `max_sample_age_s` (the receiver's out-of-order window) or
in the future by more than FUTURE_TOLERANCE_S is dropped, counted by reason, never retried.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..model import VehicleSnapshot
from .collector import value_samples
from .fleet import FleetState, fold_sensors
from .remote_write import Series

FUTURE_TOLERANCE_S = 5.0
"""A corrected timestamp later than now by more than this is refused (reason `future`): a clock still wrong."""

DROP_REASONS = ("too_old", "future")
"""`telemetry_history_snapshots_dropped_total{reason}`."""


def snapshot_series(
    fleet: FleetState,
    snaps: Sequence[VehicleSnapshot],
    *,
    job: str,
    instance: str,
    now: float,
    max_age_s: float,
) -> tuple[list[Series], dict[str, int]]:
    """The series to write for `snaps` (samples in the snapshots' order) and the snapshots dropped by reason."""
    series: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[tuple[int, float]]]] = {}
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for snap in snaps:
        vehicle = fleet.get(snap.vehicle_id)
        skew = vehicle.clock_skew_s if vehicle is not None and vehicle.clock_skew_s is not None else 0.0
        at = snap.sent_at - skew
        if at > now + FUTURE_TOLERANCE_S:
            dropped["future"] += 1
            continue
        if at < now - max_age_s:
            dropped["too_old"] += 1
            continue
        names = dict(vehicle.sensor_names) if vehicle is not None else {}
        sensors, _ = fold_sensors(names, snap.sensors, fleet.settings.max_sensor_series)
        timestamp_ms = round(at * 1000)
        for name, labels, value in value_samples(snap.vehicle_id, snap, sensors):
            full = {"__name__": name, **labels, "job": job, "instance": instance}
            entry = series.setdefault(tuple(sorted(full.items())), (full, []))
            entry[1].append((timestamp_ms, value))
    return list(series.values()), dropped
