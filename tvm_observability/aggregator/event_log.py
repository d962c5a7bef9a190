"""Vehicle error events as JSON lines in the fleet's log layout, in a file of their own (docs/events.md).

Each event is written once: the caller keeps, per vehicle and boot, the highest `event_seq` handled (decision
0003's event watermark, `BootRecord.event_seq`, persisted in the state image), and only events above it are
written, so a retried push writes nothing twice; every line carries the event id
`<vehicle_id>:<boot_id>:<event_seq>`, so a duplicate that a restart lets through collapses in Elasticsearch.
Every string comes from a vehicle and is untrusted: control characters (newlines, ANSI escapes) are shown as
`\\uXXXX` text, the record is built by this module and serialised by `json`, so no string can add a line or a
field. A per-vehicle per-minute cap bounds what one vehicle can write; what is dropped is counted by reason.
Never the service's own log: a flooding vehicle cannot silence the service (journald rate-limits per unit).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from .. import __version__
from ..model import VehicleEvent, event_id

DEFAULT_EVENTS_FILE = "/var/log/tvm-observability/vehicle-events.jsonl"
"""In the unit's `LogsDirectory=tvm-observability`."""

EVENT_SERVICE = "vehicle"
"""The `service` of every vehicle event line (the service's own lines say `telemetry_aggregator`)."""

DROP_REASONS: tuple[str, ...] = ("rate", "write_failed")
"""Why an event was not written: the vehicle's per-minute cap was used up, or the file could not be written."""

MINUTE_S = 60.0

DEFAULT_RECENT = 5
"""Last events kept per vehicle for the operator views (the default of `events.recent_per_vehicle`)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str) -> str:
    """`text` with every control character (newline, ESC, C1, line separators) as visible `\\uXXXX` text."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


@dataclass(frozen=True, slots=True)
class EventLogSettings:
    """What the `events` config section sets (config.py)."""

    file: str
    max_bytes: int
    backup_count: int
    max_per_vehicle_per_minute: int
    recent_per_vehicle: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What became of one push's events."""

    written: Mapping[str, int] = field(default_factory=dict)
    """Lines written, by level."""
    duplicates: int = 0
    """At or below the watermark: written before, acknowledged and skipped."""
    dropped: Mapping[str, int] = field(default_factory=dict)
    """Not written, by reason (DROP_REASONS)."""
    error: str | None = None
    """Why the file could not be written (for the service's own log)."""
    watermark: int = 0
    """The boot's event watermark after this push: the highest event_seq handled (written or dropped by the cap)."""


def event_record(
    vehicle_id: str,
    boot_id: str,
    event: VehicleEvent,
    *,
    skew_s: float,
    request_id: str,
    received: float,
    metadata: Mapping[str, str],
) -> dict[str, Any]:
    """The JSON log record of one event: `timestamp` is its vehicle time corrected by the vehicle's clock
    skew (vehicle minus aggregator), so Kibana shows when it happened on the aggregator's clock."""
    message = clean(event.message)
    record: dict[str, Any] = {
        "timestamp": _iso(event.stamp - skew_s),
        "level": event.level,
        "service": EVENT_SERVICE,
        "component": clean(event.component),
        "message": message,
        "error": {"message": message, **({"code": event.code} if event.code is not None else {})},
        "context": {"vehicle_id": vehicle_id, "boot_id": boot_id, "request_id": request_id},
        "metadata": dict(metadata),
        "event": {
            "id": event_id(vehicle_id, boot_id, event.event_seq),
            "seq": event.event_seq,
            "source": event.source,
            "vehicle_time": _iso(event.stamp),
            "received": _iso(received),
        },
    }
    details = record["event"]
    if event.key_values:
        details["key_values"] = [{"key": clean(k), "value": clean(v)} for k, v in event.key_values]
    if event.file is not None:
        details["file"] = clean(event.file)
    if event.function is not None:
        details["function"] = clean(event.function)
    if event.line is not None:
        details["line"] = event.line
    return record


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat(timespec="milliseconds")


class RotatingLines:
    """Appends lines to `path`; before a line would take it past `max_bytes` the file is renamed to `path.1`
    (`.1` to `.2`, … the oldest past `backup_count` deleted) and a new one started, the way Filebeat's
    filestream input follows a rotated file (by inode)."""

    def __init__(self, path: str, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._handle: IO[str] | None = None
        self._size = 0

    def write(self, lines: Iterable[str]) -> None:
        for line in lines:
            size = len(line.encode("utf-8")) + 1
            handle = self._open()
            if self._size and self._size + size > self.max_bytes:
                self._rotate()
                handle = self._open()
            handle.write(line + "\n")
            self._size += size
        if self._handle is not None:
            self._handle.flush()

    def _open(self) -> IO[str]:
        if self._handle is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open between writes)
            self._size = self._handle.tell()
        return self._handle

    def _rotate(self) -> None:
        self.close()
        for index in range(self.backup_count - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class EventLog:
    """Deduplicates, caps and writes vehicle events; keeps each vehicle's last few for the operator views.

    `settings` None: events are deduplicated and counted but not written (the `events` section is off).
    """

    def __init__(
        self,
        settings: EventLogSettings | None,
        *,
        environment: str,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.metadata = {"host": socket.gethostname(), "environment": environment, "version": __version__}
        self._monotonic = monotonic
        self._wall = wall
        self._out = (
            None if settings is None else RotatingLines(settings.file, settings.max_bytes, settings.backup_count)
        )
        self._minute: dict[str, tuple[float, int]] = {}
        self.recent: dict[str, deque[dict[str, Any]]] = {}
        """vehicle -> its last events, newest last, as the operator views show them."""

    def write(
        self,
        vehicle_id: str,
        boot_id: str,
        events: tuple[VehicleEvent, ...],
        *,
        watermark: int,
        skew_s: float,
        request_id: str,
    ) -> WriteResult:
        """Write the events above `watermark` (the boot's event watermark), in `event_seq` order, within the
        vehicle's per-minute cap. The new watermark is past every event handled (written, or dropped by the cap: a
        dropped event is counted once, never retried into the file); a failed write leaves it where it was."""
        mark = watermark
        fresh = sorted({e.event_seq: e for e in events if e.event_seq > mark}.values(), key=lambda e: e.event_seq)
        duplicates = sum(1 for e in events if e.event_seq <= mark)
        if not fresh:
            return WriteResult(duplicates=duplicates, watermark=mark)
        allowed = self._take_budget(vehicle_id, len(fresh))
        kept, capped = fresh[:allowed], len(fresh) - allowed
        received = self._wall()
        records = [
            event_record(
                vehicle_id,
                boot_id,
                e,
                skew_s=skew_s,
                request_id=request_id,
                received=received,
                metadata=self.metadata,
            )
            for e in kept
        ]
        dropped: dict[str, int] = {"rate": capped} if capped else {}
        written: dict[str, int] = {}
        try:
            if self._out is not None:
                self._out.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records)
        except OSError as exc:
            if self._out is not None:
                self._out.close()
            dropped["write_failed"] = len(records)
            error = f"{self.settings.file if self.settings else ''}: {type(exc).__name__}: {exc}"[:300]
            return WriteResult(duplicates=duplicates, dropped=dropped, error=error, watermark=mark)  # a resend writes
        for e in kept:
            written[e.level] = written.get(e.level, 0) + 1
        self._remember(vehicle_id, records)
        return WriteResult(written=written, duplicates=duplicates, dropped=dropped, watermark=fresh[-1].event_seq)

    def _take_budget(self, vehicle_id: str, wanted: int) -> int:
        cap = self.settings.max_per_vehicle_per_minute if self.settings is not None else wanted
        now = self._monotonic()
        start, used = self._minute.get(vehicle_id, (now, 0))
        if now - start >= MINUTE_S:
            start, used = now, 0
        allowed = max(0, min(wanted, cap - used))
        self._minute[vehicle_id] = (start, used + allowed)
        return allowed

    def _remember(self, vehicle_id: str, records: list[dict[str, Any]]) -> None:
        keep = self.settings.recent_per_vehicle if self.settings is not None else DEFAULT_RECENT
        if keep <= 0:
            return
        recent = self.recent.setdefault(vehicle_id, deque(maxlen=keep))
        for r in records:
            recent.append(
                {
                    "timestamp": r["timestamp"],
                    "level": r["level"],
                    "component": r["component"],
                    "code": r["error"].get("code"),
                    "message": r["message"],
                    "id": r["event"]["id"],
                }
            )

    def last_events(self, vehicle_id: str) -> list[dict[str, Any]]:
        return list(self.recent.get(vehicle_id, ()))

    def forget(self, keep: Iterable[str]) -> None:
        """Drop what is kept for vehicles no longer in the fleet state."""
        kept = set(keep)
        for table in (self._minute, self.recent):
            for vehicle_id in [v for v in table if v not in kept]:
                del table[vehicle_id]

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
