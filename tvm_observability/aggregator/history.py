"""Backlog batches (POST /api/v1/telemetry/history): validation and what they do to the fleet state. Pure, no I/O.

A batch is a msgpack array of schema-v1 snapshots of one vehicle, oldest first (docs/telemetry-protocol.md).
Each item's counts are merged into its boot through the same per-boot merge as live pushes, so a boot that
ended during an outage (its last counts only in the vehicle's journal) reaches `vehicle_errors_total`; live
values, heartbeat and liveness are never touched. Per (vehicle, boot) the history watermark (decision 0003)
skips items already written, so a retried batch writes nothing twice.

With `history.remote_write_url` the values are written to Prometheus (backfill.py, remote_write.py) before the
batch is acknowledged; without it they are counted as `no_store`, the batch is acknowledged and its counts kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SchemaError, TooManySnapshots
from ..model import VehicleSnapshot
from .fleet import FleetState
from .ingest import IngestLimits, parse_snapshot

DEFAULT_MAX_BATCH_SNAPSHOTS = 240
"""Default of `history.max_batch_snapshots` (the bridge sends at most 60 by default)."""

OUTCOMES = ("written", "dropped", "already_written", "no_store", "retired_boot")
"""`telemetry_history_snapshots_total{outcome}`: what became of each backlog snapshot received."""


def parse_batch(raw: Any, limits: IngestLimits, max_snapshots: int) -> list[VehicleSnapshot]:
    """Validate one decoded batch: an array of 1..max_snapshots snapshots of one vehicle; raises like a push."""
    if not isinstance(raw, list) or not raw:
        raise SchemaError("body: a history batch must be a non-empty array of snapshots")
    if len(raw) > max_snapshots:
        raise TooManySnapshots(f"body: {len(raw)} snapshots in one batch, at most {max_snapshots}")
    snaps = []
    for index, item in enumerate(raw):
        try:
            snaps.append(parse_snapshot(item, limits))
        except SchemaError as exc:
            raise type(exc)(f"[{index}] {exc.detail}") from None
    if len({s.vehicle_id for s in snaps}) != 1:
        raise SchemaError("body: every snapshot of a history batch must be of one vehicle")
    return snaps


def accept_batch(
    fleet: FleetState, snaps: Sequence[VehicleSnapshot], *, store: bool
) -> tuple[dict[str, int], list[VehicleSnapshot], list[VehicleSnapshot]]:
    """Merge each snapshot's counts into its boot; the number of snapshots per outcome (OUTCOMES), those whose
    values still go to the history store (`store`), oldest first: their watermarks advance with `mark_written`
    once the store has them (without a store at once: `no_store`), and those seen here for the first time (the
    backlog's news: a geofence breach during the outage is reported from them)."""
    outcomes = dict.fromkeys(OUTCOMES, 0)
    to_write: list[VehicleSnapshot] = []
    fresh: list[VehicleSnapshot] = []
    for snap in snaps:
        vehicle = fleet.get(snap.vehicle_id)
        if vehicle is not None and snap.boot_id not in vehicle.boots and snap.boot_id in vehicle.retired_boots:
            outcomes["retired_boot"] += 1  # its counts, as far as they were seen, are in the retired sum
            continue
        record = fleet.merge_history(snap)
        if record is None:
            outcomes["already_written"] += 1
        elif store:
            to_write.append(snap)
        else:
            record.history_seq = max(record.history_seq, snap.seq)
            outcomes["no_store"] += 1
        if record is not None:
            fresh.append(snap)
    return outcomes, to_write, fresh


def mark_written(fleet: FleetState, written: Sequence[VehicleSnapshot]) -> None:
    """Advance the history watermarks of snapshots the store has (or refused for good): persisted with the boots."""
    for snap in written:
        vehicle = fleet.get(snap.vehicle_id)
        record = None if vehicle is None else vehicle.boots.get(snap.boot_id)
        if record is not None and snap.seq > record.history_seq:
            record.history_seq = snap.seq
            fleet.dirty = True
