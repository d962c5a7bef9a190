"""The state image: what of the fleet state survives a restart, as plain values (the state file packs them with
msgpack), and back. Versioned: every image carries its `format`; an older one is migrated, never thrown away.

Formats (one migration function per step, in MIGRATIONS; a new format adds one):
  2  per vehicle: boots (boot_id, seq, errors), retired, codes, heartbeat_wall, restarts, snapshot (msgpack bytes)
  3  + boots[].overflow (events of codes past the per-boot memory), retired_boot_ids (refused as `stale_boot`),
     sensor_names (the sensor-name budget) and sensors_folded
  4  + boots[].history_seq (decision 0003's history watermark: the highest seq of the boot written to history)
  5  + boots[].event_seq (decision 0003's event watermark: the highest event_seq of the boot written to the
     events log)
  6  + boots[].link and link_retired (the vehicle's link counters: failed pushes, outages, outage seconds, summed
     over boots like the error counts)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .. import codec
from ..errors import TelemetryError
from ..model import LINK_COUNTERS
from .fleet import BootRecord, FleetState, VehicleState
from .ingest import IngestLimits, parse_snapshot

STATE_FORMAT = 6
"""The format this version writes."""

_TRUSTED_LIMITS = IngestLimits(max_sensors=2**31, max_error_codes=2**31, max_events=2**31)
"""Saved snapshots passed the configured limits when they arrived; limits may have shrunk since."""

Image = dict[str, Any]


class StateRefused(Exception):
    """The state file exists but the service must not start on it (a newer format, unreadable, or unusable and
    impossible to move aside): starting empty would lose every counter in it. The message says which and why."""


class NewerStateFormat(StateRefused):
    """Written by a newer version (a downgrade): this one cannot know what the newer fields mean."""


class CorruptState(ValueError):
    """Structurally broken or undecodable: nothing in it can be trusted (it is moved aside)."""


def migrate_2_to_3(image: Image) -> Image:
    """Format 3 adds what format 2 did not track: nothing overflowed, no boot retired by id, no sensor-name
    budget yet (the restored snapshot's names enter it), nothing folded."""
    vehicles = {
        vid: {
            **saved,
            "boots": [{**boot, "overflow": 0} for boot in saved["boots"]],
            "retired_boot_ids": [],
            "sensor_names": [],
            "sensors_folded": 0,
        }
        for vid, saved in image["vehicles"].items()
    }
    return {**image, "format": 3, "vehicles": vehicles}


def migrate_3_to_4(image: Image) -> Image:
    """Format 4 adds the history watermark per boot: nothing of any boot written to history yet."""
    vehicles = {
        vid: {**saved, "boots": [{**boot, "history_seq": 0} for boot in saved["boots"]]}
        for vid, saved in image["vehicles"].items()
    }
    return {**image, "format": 4, "vehicles": vehicles}


def migrate_4_to_5(image: Image) -> Image:
    """Format 5 adds the event watermark per boot: no event of any boot written yet (an event replayed after the
    upgrade is written again, with its id, and collapses downstream)."""
    vehicles = {
        vid: {**saved, "boots": [{**boot, "event_seq": 0} for boot in saved["boots"]]}
        for vid, saved in image["vehicles"].items()
    }
    return {**image, "format": 5, "vehicles": vehicles}


def migrate_5_to_6(image: Image) -> Image:
    """Format 6 adds the link counters: no boot had reported its link view to a version that kept it."""
    vehicles = {
        vid: {**saved, "boots": [{**boot, "link": {}} for boot in saved["boots"]], "link_retired": {}}
        for vid, saved in image["vehicles"].items()
    }
    return {**image, "format": 6, "vehicles": vehicles}


MIGRATIONS: dict[int, Callable[[Image], Image]] = {
    2: migrate_2_to_3,
    3: migrate_3_to_4,
    4: migrate_4_to_5,
    5: migrate_5_to_6,
}
"""Format N -> a function returning the image in format N + 1."""


def migrate(image: Mapping[str, Any]) -> Image:
    """The image in STATE_FORMAT. Raises NewerStateFormat (or StateRefused for a format older than any migration)
    without changing anything, CorruptState when the image is not one."""
    found = image.get("format")
    if type(found) is not int:
        raise CorruptState(f"no state format number (found {found!r})")
    if found > STATE_FORMAT:
        raise NewerStateFormat(
            f"state format {found} was written by a newer version of the aggregator; this one reads formats "
            f"up to {STATE_FORMAT}: upgrade again, or move the file away to start empty"
        )
    if found < STATE_FORMAT and found not in MIGRATIONS:
        raise StateRefused(f"state format {found} is older than any this version can migrate ({min(MIGRATIONS)})")
    current = dict(image)
    while current["format"] < STATE_FORMAT:
        try:
            current = MIGRATIONS[current["format"]](current)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CorruptState(f"format {current['format']} image is broken: {type(exc).__name__}: {exc}") from None
    return current


def image_header(fleet: FleetState) -> Image:
    """The image's entries other than "vehicles"."""
    return {"format": STATE_FORMAT, "saved_at": fleet.clock.time()}


def vehicle_images(fleet: FleetState) -> Iterator[tuple[str, Image]]:
    """The image's "vehicles" entries, one at a time, over a copy of the vehicle list: the caller may let the
    state change between two (a vehicle changed after its entry was taken leaves the state dirty). Each entry is
    built from copies, so a later change of the vehicle does not alter an entry already taken."""
    for v in list(fleet):
        if v.boots:
            yield v.vehicle_id, _vehicle_image(v)


def to_image(fleet: FleetState) -> Image:
    """The whole image in one piece (the state file packs it in slices, persistence.py)."""
    return {**image_header(fleet), "vehicles": dict(vehicle_images(fleet))}


def restore(fleet: FleetState, image: Mapping[str, Any], *, keep_unknown: bool) -> list[str]:
    """Load an image (of this format or an older one) into `fleet`; returns the ids skipped (not on the roster
    while unknowns are refused).

    The whole image is checked before anything is applied: a broken one raises CorruptState, a newer one
    NewerStateFormat, and the fleet stays as it was.
    """
    current = migrate(image)
    try:
        restored = [_restored_vehicle(str(vid), saved) for vid, saved in current["vehicles"].items()]
    except (KeyError, TypeError, AttributeError, ValueError, TelemetryError) as exc:
        raise CorruptState(f"{type(exc).__name__}: {exc}") from None
    return fleet.adopt(restored, keep_unknown=keep_unknown)


def _vehicle_image(v: VehicleState) -> Image:
    if v.snapshot_body is None and v.snapshot is not None:
        v.snapshot_body = codec.encode(v.snapshot)  # once per snapshot kept without its body
    return {
        "boots": [
            {
                "boot_id": b,
                "seq": r.seq,
                "errors": dict(r.errors),
                "overflow": r.overflow,
                "history_seq": r.history_seq,
                "event_seq": r.event_seq,
                "link": dict(r.link),
            }
            for b, r in v.boots.items()
        ],
        "retired": dict(v.retired),
        "link_retired": dict(v.link_retired),
        "retired_boot_ids": list(v.retired_boots),
        "codes": list(v.codes),
        "sensor_names": list(v.sensor_names),
        "sensors_folded": v.sensors_folded,
        "heartbeat_wall": v.heartbeat_wall,
        "restarts": v.restarts,
        "snapshot": v.snapshot_body,
    }


def _restored_vehicle(vehicle_id: str, saved: Mapping[str, Any]) -> VehicleState:
    vehicle = VehicleState(vehicle_id, on_roster=False)
    vehicle.boots = OrderedDict(
        (
            str(b["boot_id"]),
            BootRecord(
                _count(b["seq"]),
                _counts(b["errors"]),
                _count(b["overflow"]),
                _count(b["history_seq"]),
                _count(b["event_seq"]),
                _amounts(b["link"]),
            ),
        )
        for b in saved["boots"]
    )
    vehicle.retired = _counts(saved["retired"])
    vehicle.link_retired = _amounts(saved["link_retired"])
    vehicle.retired_boots = dict.fromkeys(str(boot_id) for boot_id in saved["retired_boot_ids"])
    vehicle.codes = dict.fromkeys(str(code) for code in saved["codes"])
    vehicle.sensor_names = dict.fromkeys(str(name) for name in saved["sensor_names"])
    vehicle.sensors_folded = _count(saved["sensors_folded"])
    vehicle.restarts = _count(saved["restarts"])
    if saved["heartbeat_wall"] is not None:
        vehicle.heartbeat_wall = float(saved["heartbeat_wall"])
    if saved["snapshot"] is not None:
        vehicle.snapshot_body = bytes(saved["snapshot"])
        vehicle.snapshot = parse_snapshot(codec.decode(vehicle.snapshot_body), _TRUSTED_LIMITS)
        if vehicle.snapshot.vehicle_id != vehicle_id:
            raise ValueError(f"saved snapshot of {vehicle.snapshot.vehicle_id} filed under {vehicle_id}")
    return vehicle


def _count(raw: Any) -> int:
    count = int(raw)
    if count < 0:
        raise ValueError("negative count in state image")
    return count


def _amounts(raw: Mapping[str, Any]) -> dict[str, float]:
    """Link counters: only the known names, each a finite non-negative number."""
    amounts = {str(name): float(value) for name, value in raw.items()}
    if any(name not in LINK_COUNTERS or not 0.0 <= value < math.inf for name, value in amounts.items()):
        raise ValueError("unknown, negative or non-finite link counter in state image")
    return amounts


def _counts(raw: Mapping[str, Any]) -> dict[str, int]:
    return {str(code): _count(count) for code, count in raw.items()}
