"""Vehicle error events captured on the robot: numbered, bounded, handed to the snapshots. Pure: times are passed in.

`EventCapture` turns diagnostic statuses entering ERROR and `/rosout` entries at or above a level (from the
vehicle's own nodes, never the bridge's own loggers) into `VehicleEvent`s with a per-boot `event_seq`. It keeps
at most `max_pending` events waiting for a push, takes at most `max_per_push` into each snapshot, and admits at
most `max_per_minute` per minute; what it does not keep is counted by reason (`dropped`), never queued without
bound. Messages longer than the wire allows are truncated.

`/rosout` is TRANSIENT_LOCAL: a restarted bridge receives again the entries of the last seconds. `RosoutMarks`
remembers, per logger, the stamp of the last entry captured; with a journal it is saved next to the journal
(when the journal is flushed, so that it never runs ahead of the events it covers) and read back at start, so an
entry already captured is not captured again while an entry logged while the bridge was down is. Without a
journal nothing survives a restart anyway, so entries stamped before the bridge's start are skipped.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..model import MAX_EVENT_KEY_VALUES, MAX_EVENT_MESSAGE_CHARS, MAX_EVENT_TEXT_CHARS, NAME_PATTERN, VehicleEvent
from .converters import DiagnosticEntry, LogEntry

ROSOUT_LEVELS: Mapping[str, int] = {"WARN": 30, "ERROR": 40, "FATAL": 50}
"""rcl_interfaces/msg/Log levels the bridge can keep, by the name used as the event's level."""

DROP_REASONS: tuple[str, ...] = ("rate", "queue")
"""Why an event was not kept: the per-minute cap (`rate`) or the pending queue was full (`queue`)."""

MARKS_FILE = "rosout_marks.json"
"""In the journal directory: per logger, the stamp of the last /rosout entry captured."""

MAX_LOGGERS_REMEMBERED = 1024

TRUNCATED = "…"


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """No defaults here: each field is the bridge parameter of the same name in bridge.params."""

    events_min_level: str
    """WARN, ERROR or FATAL: the lowest /rosout level kept."""
    events_namespace: str
    """Logger-name prefix of the vehicle's own nodes (`v5` for nodes in /v5); empty: every node."""
    own_logger: str
    """The bridge's own logger name: its entries (and its children's) never become events."""
    events_max_per_push: int
    events_max_per_minute: int
    events_max_pending: int


def logger_prefix(namespace: str) -> str:
    """A node namespace (`/v5`, `/fleet/v5`) as the prefix of its nodes' logger names (`v5.`, `fleet.v5.`)."""
    cleaned = namespace.strip("/").replace("/", ".")
    return f"{cleaned}." if cleaned else ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


class RosoutMarks:
    """Per logger, the stamp of the last /rosout entry captured (saved to `path` when given)."""

    def __init__(self, path: str | None, *, floor: float) -> None:
        self.path = path
        self.floor = floor
        """Without a file: entries stamped before this (the bridge's start) are skipped."""
        self.marks: dict[str, float] = {}
        """What has been captured in this run (and what the file said at start)."""
        self.journalled: dict[str, float] = {}
        """What has gone into snapshots: what the file is written from."""
        self.problem = ""
        self._saved: dict[str, float] | None = None
        """What the file holds since the last save (None: not written in this run)."""
        if path is not None:
            self.floor = 0.0
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.problem = f"{path}: {type(exc).__name__}: {exc}"[:200]
            return
        if isinstance(raw, dict):
            self.marks = {
                str(k): float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)
            }
            self.journalled = dict(self.marks)

    def is_new(self, logger: str, stamp: float) -> bool:
        return stamp > self.marks.get(logger, self.floor)

    def mark(self, logger: str, stamp: float) -> None:
        _put(self.marks, logger, stamp)

    def taken(self, logger: str, stamp: float) -> None:
        """An entry of `logger` went into a snapshot (and so into the journal)."""
        _put(self.journalled, logger, stamp)

    def save(self) -> None:
        """Write the marks atomically (after the journal flush that holds the events they cover); not again while
        they are what was last written (no write every flush on an SD card while nothing is logged)."""
        if self.path is None or (self.journalled == self._saved and not self.problem):
            return
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(self.journalled, handle)
            os.replace(temporary, self.path)
            self.problem = ""
            self._saved = dict(self.journalled)
        except OSError as exc:
            self.problem = f"{self.path}: {type(exc).__name__}: {exc}"[:200]


def _put(marks: dict[str, float], logger: str, stamp: float) -> None:
    if logger not in marks and len(marks) >= MAX_LOGGERS_REMEMBERED:
        del marks[min(marks, key=marks.__getitem__)]
    marks[logger] = max(stamp, marks.get(logger, 0.0))


@dataclass
class EventCapture:
    """Numbers, bounds and hands over one boot's error events."""

    settings: CaptureSettings
    marks: RosoutMarks
    event_seq: int = 0
    pending: deque[VehicleEvent] = field(default_factory=deque)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    captured: int = 0
    _minute: tuple[float, int] = (float("-inf"), 0)

    def on_rosout(self, entry: LogEntry, now: float) -> bool:
        """Capture a /rosout entry of the vehicle's own nodes at or above the level; True if kept."""
        s = self.settings
        level = next((name for name, value in reversed(list(ROSOUT_LEVELS.items())) if entry.level >= value), None)
        if level is None or entry.level < ROSOUT_LEVELS[s.events_min_level]:
            return False
        name = _cut(entry.name, MAX_EVENT_TEXT_CHARS)
        own = name == s.own_logger or name.startswith(s.own_logger + ".")
        prefix = logger_prefix(s.events_namespace)
        if own or not name.startswith(prefix) or not self.marks.is_new(name, entry.stamp):
            return False
        self.marks.mark(name, entry.stamp)
        return self._add(
            now,
            stamp=entry.stamp,
            level=level,
            source="rosout",
            component=name,
            message=entry.message,
            code=None,
            key_values=(),
            file=entry.file,
            function=entry.function,
            line=entry.line,
        )

    def on_diagnostic_error(self, entry: DiagnosticEntry, code: str, stamp: float, now: float) -> bool:
        """Capture a diagnostic status that entered ERROR (SnapshotBuilder.on_diagnostics says which)."""
        return self._add(
            now,
            stamp=stamp,
            level="ERROR",
            source="diagnostic",
            component=entry.name,
            message=entry.message,
            code=code if NAME_PATTERN.fullmatch(code) else None,
            key_values=entry.values,
            file=None,
            function=None,
            line=None,
        )

    def _add(
        self,
        now: float,
        *,
        stamp: float,
        level: str,
        source: str,
        component: str,
        message: str,
        code: str | None,
        key_values: tuple[tuple[str, str], ...],
        file: str | None,
        function: str | None,
        line: int | None,
    ) -> bool:
        s = self.settings
        start, used = self._minute
        if now - start >= 60.0:
            start, used = now, 0
        if used >= s.events_max_per_minute:
            self.dropped["rate"] += 1
            return False
        if len(self.pending) >= s.events_max_pending:
            self.dropped["queue"] += 1
            return False
        self._minute = (start, used + 1)
        self.event_seq += 1
        self.captured += 1
        self.pending.append(
            VehicleEvent(
                event_seq=self.event_seq,
                stamp=max(0.0, stamp),
                level=level,
                source=source,
                component=_cut(component, MAX_EVENT_TEXT_CHARS),
                message=_cut(message, MAX_EVENT_MESSAGE_CHARS),
                code=code,
                key_values=tuple(
                    (_cut(k, MAX_EVENT_TEXT_CHARS), _cut(v, MAX_EVENT_TEXT_CHARS))
                    for k, v in key_values[:MAX_EVENT_KEY_VALUES]
                ),
                file=None if file is None else _cut(file, MAX_EVENT_TEXT_CHARS),
                function=None if function is None else _cut(function, MAX_EVENT_TEXT_CHARS),
                line=None if line is None else min(max(line, 0), 2**31 - 1),
            )
        )
        return True

    def take(self) -> tuple[VehicleEvent, ...]:
        """The oldest pending events, at most `events_max_per_push`, for the next snapshot."""
        count = min(len(self.pending), self.settings.events_max_per_push)
        events = tuple(self.pending.popleft() for _ in range(count))
        for event in events:
            if event.source == "rosout":
                self.marks.taken(event.component, event.stamp)
        return events
