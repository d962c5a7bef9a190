"""The bridge's event capture (bridge/events.py): which /rosout entries and diagnostics become events, numbering,
caps, truncation, and the /rosout marks that keep a restarted bridge from capturing history twice. No ROS."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tvm_observability import codec
from tvm_observability.aggregator.ingest import parse_snapshot
from tvm_observability.bridge.converters import DiagnosticEntry, LogEntry, diagnostics_from_msg, log_entry_from_msg
from tvm_observability.bridge.events import MARKS_FILE, CaptureSettings, EventCapture, RosoutMarks, logger_prefix
from tvm_observability.bridge.params import ParamError, default_values, parse_params
from tvm_observability.bridge.snapshot import BuilderSettings, SnapshotBuilder
from tvm_observability.model import MAX_EVENT_MESSAGE_CHARS

ERROR, FATAL, WARN, INFO = 40, 50, 30, 20


def settings(**fields: Any) -> CaptureSettings:
    base: dict[str, Any] = {
        "events_min_level": "ERROR",
        "events_namespace": "/v1",
        "own_logger": "v1.vehicle_bridge",
        "events_max_per_push": 20,
        "events_max_per_minute": 60,
        "events_max_pending": 200,
    }
    base.update(fields)
    return CaptureSettings(**base)


def entry(name: str = "v1.planner", level: int = ERROR, stamp: float = 100.0, message: str = "failed") -> LogEntry:
    return LogEntry(stamp=stamp, level=level, name=name, message=message, file="p.cpp", function="plan", line=7)


def capture(marks: RosoutMarks | None = None, **fields: Any) -> EventCapture:
    return EventCapture(settings(**fields), marks or RosoutMarks(None, floor=0.0))


def test_only_the_vehicles_own_nodes_at_the_level_are_captured_never_the_bridge() -> None:
    c = capture()
    kept = [
        c.on_rosout(entry("v1.planner", ERROR, 1.0), 0.0),
        c.on_rosout(entry("v1.lidar.driver", FATAL, 2.0), 0.0),
        c.on_rosout(entry("v1.planner", WARN, 3.0), 0.0),
        c.on_rosout(entry("v1.planner", INFO, 4.0), 0.0),
        c.on_rosout(entry("v2.planner", ERROR, 5.0), 0.0),
        c.on_rosout(entry("v10.planner", ERROR, 6.0), 0.0),
        c.on_rosout(entry("v1.vehicle_bridge", ERROR, 7.0), 0.0),
        c.on_rosout(entry("v1.vehicle_bridge.pusher", ERROR, 8.0), 0.0),
    ]
    assert kept == [True, True, False, False, False, False, False, False]
    events = c.take()
    assert [(e.event_seq, e.level, e.component) for e in events] == [
        (1, "ERROR", "v1.planner"),
        (2, "FATAL", "v1.lidar.driver"),
    ]
    assert (events[0].file, events[0].function, events[0].line, events[0].source) == ("p.cpp", "plan", 7, "rosout")


def test_warn_is_captured_when_asked() -> None:
    c = capture(events_min_level="WARN")
    assert c.on_rosout(entry(level=WARN), 0.0)
    assert c.take()[0].level == "WARN"


@pytest.mark.parametrize(("namespace", "prefix"), [("/", ""), ("", ""), ("/v5", "v5."), ("/fleet/v5/", "fleet.v5.")])
def test_namespaces_map_to_logger_prefixes(namespace: str, prefix: str) -> None:
    assert logger_prefix(namespace) == prefix


def test_caps_per_push_per_minute_and_pending_drop_and_count() -> None:
    c = capture(events_max_per_push=3, events_max_per_minute=5, events_max_pending=100)
    for i in range(8):
        c.on_rosout(entry(stamp=float(i + 1)), now=10.0)
    assert c.dropped == {"rate": 3, "queue": 0}
    assert [e.event_seq for e in c.take()] == [1, 2, 3]
    assert [e.event_seq for e in c.take()] == [4, 5]
    assert c.take() == ()
    assert c.on_rosout(entry(stamp=50.0), now=70.0)  # a new minute
    q = capture(events_max_pending=2)
    for i in range(4):
        q.on_rosout(entry(stamp=float(i + 1)), now=0.0)
    assert q.dropped == {"rate": 0, "queue": 2} and len(q.pending) == 2


def test_oversized_strings_are_truncated_to_what_the_wire_allows() -> None:
    c = capture(events_namespace="")
    c.on_rosout(entry(name="n" * 400, message="m" * 5000), 0.0)
    (event,) = c.take()
    assert len(event.message) == MAX_EVENT_MESSAGE_CHARS and event.message.endswith("…")
    assert len(event.component) == 256
    snapshot_wire = {"v": 1, "vehicle_id": "V1", "boot_id": "b", "seq": 1, "sent_at": 1.0, "events": [event.to_wire()]}
    assert parse_snapshot(codec.decode(codec.encode_wire(snapshot_wire))).events == (event,)


def test_hostile_text_is_carried_as_is_for_the_aggregator_to_neutralise() -> None:
    c = capture(events_namespace="")
    hostile = 'x\n{"level":"INFO"}\x1b[31m'
    c.on_rosout(entry(name="v1.evil\nnode", message=hostile), 0.0)
    (event,) = c.take()
    assert event.message == hostile and event.component == "v1.evil\nnode"


def test_without_a_journal_history_from_before_the_start_is_skipped() -> None:
    c = capture(RosoutMarks(None, floor=1000.0))
    assert not c.on_rosout(entry(stamp=999.0), 0.0)
    assert c.on_rosout(entry(stamp=1001.0), 0.0)
    assert not c.on_rosout(entry(stamp=1001.0), 0.0)  # the same entry delivered twice


def test_a_restarted_bridge_skips_what_it_journalled_and_keeps_what_came_while_it_was_down(tmp_path: Path) -> None:
    path = str(tmp_path / MARKS_FILE)
    first = capture(RosoutMarks(path, floor=0.0))
    first.on_rosout(entry(stamp=10.0), 0.0)
    first.on_rosout(entry(stamp=11.0), 0.0)
    first.on_rosout(entry("v1.other", stamp=5.0), 0.0)
    first.take()
    first.on_rosout(entry(stamp=12.0), 0.0)  # captured, never put in a snapshot: not marked as delivered
    first.marks.save()
    second = capture(RosoutMarks(path, floor=10_000.0))  # the floor only applies without a file
    replayed = [second.on_rosout(entry(stamp=s), 0.0) for s in (10.0, 11.0, 12.0, 13.0)]
    assert replayed == [False, False, True, True]
    assert not second.on_rosout(entry("v1.other", stamp=5.0), 0.0)
    assert second.on_rosout(entry("v1.other", stamp=6.0), 0.0)


def test_unreadable_marks_are_reported_and_capture_goes_on(tmp_path: Path) -> None:
    path = tmp_path / MARKS_FILE
    path.write_text("{not json")
    marks = RosoutMarks(str(path), floor=0.0)
    assert "JSONDecodeError" in marks.problem
    assert capture(marks).on_rosout(entry(), 0.0)


def test_diagnostics_entering_error_become_events_with_code_and_key_values() -> None:
    builder = SnapshotBuilder(
        BuilderSettings(
            vehicle_id="V1",
            statuses=("idle",),
            sensors=(),
            battery_stale_s=0,
            position_stale_s=0,
            pose_stale_s=0,
            status_stale_s=0,
            diagnostics_stale_s=10,
            liveness_window_s=2,
            max_error_codes=8,
        ),
        started=0.0,
    )
    kv = [SimpleNamespace(key="error_code", value="VEH-LID-002"), SimpleNamespace(key="port", value="/dev/ttyUSB0")]
    msg = SimpleNamespace(status=[SimpleNamespace(name="lidar: driver", level=b"\x02", message="no data", values=kv)])
    c = capture()
    for now in (1.0, 2.0):  # stays in ERROR: one event
        for diag, code in builder.on_diagnostics(diagnostics_from_msg(msg), now):
            c.on_diagnostic_error(diag, code, 1_800_000_000.0, now)
    (event,) = c.take()
    assert (event.source, event.level, event.component, event.code) == (
        "diagnostic",
        "ERROR",
        "lidar: driver",
        "VEH-LID-002",
    )
    assert event.key_values == (("error_code", "VEH-LID-002"), ("port", "/dev/ttyUSB0"))
    snap = builder.build(3.0, 1_800_000_003.0, (event,))
    assert snap.events == (event,) and snap.errors == {"VEH-LID-002": 1}


def test_log_entry_from_a_rosout_message() -> None:
    msg = SimpleNamespace(
        stamp=SimpleNamespace(sec=1_800_000_000, nanosec=500_000_000),
        level=b"\x28",
        name="v1.planner",
        msg="failed",
        file="p.cpp",
        function="plan",
        line=7,
    )
    assert log_entry_from_msg(msg) == LogEntry(1_800_000_000.5, 40, "v1.planner", "failed", "p.cpp", "plan", 7)


def test_event_parameters_default_and_refuse_bad_values() -> None:
    values = {**default_values(), "vehicle_id": "V1"}
    events = parse_params(values).events
    assert events is not None
    assert (events.rosout, events.min_level, events.rosout_filter, events.namespace) == (True, "ERROR", True, "")
    bad = {
        **values,
        "events_rosout_filter": "yes",
        "events_min_level": "INFO",
        "events_namespace": "bad ns",
        "events_max_per_push": 0,
    }
    with pytest.raises(ParamError) as info:
        parse_params(bad)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "events_rosout_filter",
        "events_min_level",
        "events_namespace",
        "events_max_per_push",
    ]


def test_a_diagnostic_entry_keeps_no_more_key_values_than_the_wire_allows() -> None:
    kv = [SimpleNamespace(key=f"k{i}", value="v") for i in range(40)]
    msg = SimpleNamespace(status=[SimpleNamespace(name="x", level=2, message="m", values=kv)])
    (diag,) = diagnostics_from_msg(msg)
    assert isinstance(diag, DiagnosticEntry) and len(diag.values) == 16
