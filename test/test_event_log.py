"""Vehicle error events: the wire field, its validation, and the aggregator's events file (docs/events.md)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import FakeClock, parse_metrics, sample, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import state_image
from tvm_observability.aggregator.app import RUNTIME, make_app
from tvm_observability.aggregator.config import parse_config
from tvm_observability.aggregator.event_log import EventLog, EventLogSettings, RotatingLines, WriteResult
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import IngestLimits, parse_snapshot
from tvm_observability.errors import SchemaError, TooManyEvents
from tvm_observability.model import MAX_EVENT_MESSAGE_CHARS, VehicleEvent, VehicleSnapshot

Client = TestClient  # type: ignore[type-arg]
MakeClient = Callable[..., Awaitable[Client]]

HOSTILE = 'boom\n{"level":"INFO","service":"x"}\r\x1b[31mred\x1b[0m\u2028"},"context":{"vehicle_id":"V2"'


def event(seq: int, **fields: Any) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "event_seq": seq,
        "stamp": 1_800_000_000.5,
        "level": "ERROR",
        "source": "rosout",
        "component": "/v1/planner",
        "message": f"planning failed {seq}",
        "code": "VEH-NAV-001",
        "file": "planner.cpp",
        "function": "plan",
        "line": 42,
    }
    wire.update(fields)
    return wire


# -- wire and validation -------------------------------------------------------------------------


def test_events_round_trip_through_the_codec() -> None:
    ev = VehicleEvent(
        event_seq=3,
        stamp=1_800_000_001.25,
        level="FATAL",
        source="diagnostic",
        component="lidar",
        message="no data",
        code="VEH-LID-002",
        key_values=(("port", "/dev/ttyUSB0"),),
    )
    snap = VehicleSnapshot(vehicle_id="V1", boot_id="b", seq=1, sent_at=1_800_000_002.0, events=(ev,))
    parsed = parse_snapshot(codec.decode(codec.encode(snap)))
    assert parsed.events == (ev,)


def test_a_snapshot_without_events_has_no_events_key() -> None:
    """Old aggregators and the golden bodies see exactly what they saw before (decision 0006)."""
    assert "events" not in VehicleSnapshot(vehicle_id="V1", boot_id="b", seq=1, sent_at=1.0).to_wire()
    assert parse_snapshot(wire_snapshot()).events == ()


def test_too_many_events_in_one_push_are_refused() -> None:
    with pytest.raises(TooManyEvents) as info:
        parse_snapshot(wire_snapshot(events=[event(i) for i in range(1, 5)]), IngestLimits(max_events=3))
    assert info.value.reason == "limit_events"
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("level", "INFO"),
        ("level", None),
        ("source", "stdout"),
        ("event_seq", 0),
        ("event_seq", 1.5),
        ("stamp", float("nan")),
        ("message", "x" * (MAX_EVENT_MESSAGE_CHARS + 1)),
        ("message", b"bytes"),
        ("component", "c" * 257),
        ("code", "has space"),
        ("key_values", [["k", "v"]] * 17),
        ("key_values", [["k"]]),
        ("key_values", [["k", 1]]),
        ("line", -1),
    ],
)
def test_bad_events_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(SchemaError) as info:
        parse_snapshot(wire_snapshot(events=[event(1, **{field: value})]))
    assert info.value.detail.startswith(f"events[0].{field}"), info.value.detail


def test_events_must_be_a_list() -> None:
    with pytest.raises(SchemaError, match="events: must be a list"):
        parse_snapshot(wire_snapshot(events={"1": event(1)}))


# -- the events file ------------------------------------------------------------------------------


def settings(tmp_path: Path, **fields: Any) -> EventLogSettings:
    base: dict[str, Any] = {
        "file": str(tmp_path / "events.jsonl"),
        "max_bytes": 1 << 20,
        "backup_count": 3,
        "max_per_vehicle_per_minute": 100,
        "recent_per_vehicle": 3,
    }
    base.update(fields)
    return EventLogSettings(**base)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events_of(*wires: dict[str, Any]) -> tuple[VehicleEvent, ...]:
    return parse_snapshot(wire_snapshot(events=list(wires))).events


class Boots:
    """The event watermarks the app keeps in each BootRecord: what `write` returns, fed back."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.marks: dict[tuple[str, str], int] = {}

    def write(self, vehicle: str, boot: str, events: tuple[VehicleEvent, ...], **kw: Any) -> WriteResult:
        result = self.log.write(vehicle, boot, events, watermark=self.marks.get((vehicle, boot), 0), **kw)
        self.marks[(vehicle, boot)] = result.watermark
        return result


def test_each_event_is_written_once_across_retries_and_reorders(tmp_path: Path) -> None:
    clock = FakeClock()
    log = Boots(EventLog(settings(tmp_path), environment="test", monotonic=clock.monotonic, wall=clock.time))
    first = log.write("V1", "boot-a", events_of(event(1), event(2)), skew_s=0.0, request_id="r1")
    again = log.write("V1", "boot-a", events_of(event(2), event(1), event(3)), skew_s=0.0, request_id="r2")
    other_boot = log.write("V1", "boot-b", events_of(event(1)), skew_s=0.0, request_id="r3")
    assert (first.written, first.duplicates) == ({"ERROR": 2}, 0)
    assert (again.written, again.duplicates) == ({"ERROR": 1}, 2)
    assert other_boot.written == {"ERROR": 1}
    ids = [r["event"]["id"] for r in lines(tmp_path / "events.jsonl")]
    assert ids == ["V1:boot-a:1", "V1:boot-a:2", "V1:boot-a:3", "V1:boot-b:1"]


def test_a_record_has_the_fleet_layout_with_the_vehicle_time_skew_corrected(tmp_path: Path) -> None:
    clock = FakeClock()
    log = Boots(EventLog(settings(tmp_path), environment="staging", monotonic=clock.monotonic, wall=clock.time))
    kv = [["port", "/dev/ttyUSB0"]]
    log.write("V1", "boot-a", events_of(event(7, key_values=kv)), skew_s=2.0, request_id="req-1")
    (record,) = lines(tmp_path / "events.jsonl")
    assert record["timestamp"] == "2027-01-15T07:59:58.500+00:00"  # 1_800_000_000.5 less 2 s of skew
    assert record["event"]["vehicle_time"] == "2027-01-15T08:00:00.500+00:00"
    assert record["level"] == "ERROR"
    assert record["service"] == "vehicle"
    assert record["component"] == "/v1/planner"
    assert record["message"] == "planning failed 7"
    assert record["error"] == {"code": "VEH-NAV-001", "message": "planning failed 7"}
    assert record["context"] == {"vehicle_id": "V1", "boot_id": "boot-a", "request_id": "req-1"}
    assert record["metadata"]["environment"] == "staging"
    assert set(record["metadata"]) == {"host", "environment", "version"}
    assert record["event"]["id"] == "V1:boot-a:7"
    assert record["event"]["key_values"] == [{"key": "port", "value": "/dev/ttyUSB0"}]
    assert (record["event"]["file"], record["event"]["function"], record["event"]["line"]) == (
        "planner.cpp",
        "plan",
        42,
    )


def test_hostile_strings_stay_inside_their_own_field_on_one_line(tmp_path: Path) -> None:
    clock = FakeClock()
    log = Boots(EventLog(settings(tmp_path), environment="test", monotonic=clock.monotonic, wall=clock.time))
    hostile = event(1, message=HOSTILE, component=HOSTILE[:200], key_values=[[HOSTILE[:100], HOSTILE[:100]]])
    log.write("V1", "boot-a", events_of(hostile), skew_s=0.0, request_id="r")
    text = (tmp_path / "events.jsonl").read_text(encoding="utf-8")
    assert text.count("\n") == 1
    assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
    (record,) = lines(tmp_path / "events.jsonl")
    assert record["level"] == "ERROR" and record["service"] == "vehicle"
    assert record["context"]["vehicle_id"] == "V1"
    assert record["message"].startswith("boom\\u000a{")
    assert "\\u001b[31mred" in record["message"]


def test_the_per_minute_cap_drops_and_counts_and_spares_other_vehicles(tmp_path: Path) -> None:
    clock = FakeClock()
    log = Boots(
        EventLog(
            settings(tmp_path, max_per_vehicle_per_minute=5),
            environment="t",
            monotonic=clock.monotonic,
            wall=clock.time,
        )
    )
    flood = log.write("V1", "b", events_of(*(event(i) for i in range(1, 9))), skew_s=0.0, request_id="r")
    calm = log.write("V2", "b", events_of(event(1)), skew_s=0.0, request_id="r")
    more = log.write("V1", "b", events_of(event(9)), skew_s=0.0, request_id="r")
    clock.advance(60.0)
    later = log.write("V1", "b", events_of(event(10)), skew_s=0.0, request_id="r")
    assert (flood.written, flood.dropped) == ({"ERROR": 5}, {"rate": 3})
    assert calm.written == {"ERROR": 1}
    assert (more.written, more.dropped) == ({}, {"rate": 1})
    assert later.written == {"ERROR": 1}
    written = [(r["context"]["vehicle_id"], r["event"]["seq"]) for r in lines(tmp_path / "events.jsonl")]
    assert written == [("V1", 1), ("V1", 2), ("V1", 3), ("V1", 4), ("V1", 5), ("V2", 1), ("V1", 10)]


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    out = RotatingLines(str(path), max_bytes=100, backup_count=2)
    out.write(f"line {i:02d} " + "x" * 40 for i in range(10))
    out.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    newest = path.read_text().splitlines()
    assert newest[-1].startswith("line 09")


def test_a_failed_write_is_counted_and_written_on_the_retry(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    clock = FakeClock()
    log = Boots(
        EventLog(
            settings(tmp_path, file=str(blocker / "events.jsonl")),
            environment="t",
            monotonic=clock.monotonic,
            wall=clock.time,
        )
    )
    failed = log.write("V1", "b", events_of(event(1)), skew_s=0.0, request_id="r")
    assert failed.dropped == {"write_failed": 1} and failed.watermark == 0
    assert failed.error is not None and "not-a-dir" in failed.error
    blocker.unlink()
    blocker.mkdir()
    retried = log.write("V1", "b", events_of(event(1)), skew_s=0.0, request_id="r")
    assert retried.written == {"ERROR": 1} and len(lines(blocker / "events.jsonl")) == 1


def test_the_event_watermark_survives_the_state_image_and_format_4_migrates() -> None:
    fleet = FleetState(["V1"], FleetSettings(), clock=FakeClock())
    fleet.apply(parse_snapshot(wire_snapshot(boot_id="b1", seq=3)))
    fleet.get("V1").boots["b1"].event_seq = 9  # type: ignore[union-attr]
    image = state_image.to_image(fleet)
    assert image["format"] == state_image.STATE_FORMAT and image["vehicles"]["V1"]["boots"][0]["event_seq"] == 9
    restored = FleetState(["V1"], FleetSettings(), clock=FakeClock())
    state_image.restore(restored, image, keep_unknown=False)
    assert restored.get("V1").boots["b1"].event_seq == 9  # type: ignore[union-attr]
    old = {**image, "format": 4, "vehicles": {"V1": {**image["vehicles"]["V1"]}}}
    old["vehicles"]["V1"]["boots"] = [
        {k: v for k, v in b.items() if k != "event_seq"} for b in image["vehicles"]["V1"]["boots"]
    ]
    assert state_image.migrate(old)["vehicles"]["V1"]["boots"][0]["event_seq"] == 0


def test_a_saved_snapshot_with_more_events_than_todays_limit_restores() -> None:
    fleet = FleetState(["V1"], FleetSettings(), clock=FakeClock())
    wire = wire_snapshot(events=[event(i) for i in range(1, 121)])
    fleet.apply(parse_snapshot(wire, IngestLimits(max_events=200)), codec.encode_wire(wire))
    restored = FleetState(["V1"], FleetSettings(), clock=FakeClock())
    state_image.restore(restored, state_image.to_image(fleet), keep_unknown=False)
    assert len(restored.get("V1").snapshot.events) == 120  # type: ignore[union-attr]


# -- through the app ------------------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client: MakeClient, tmp_path: Path) -> Client:
    config = parse_config(
        {
            "auth_required": False,
            "allow_unknown_vehicles": True,
            "events": {"file": str(tmp_path / "events.jsonl"), "max_per_vehicle_per_minute": 4},
        },
        listen="127.0.0.1:0",
    )
    return await aiohttp_client(make_app(config, clock=FakeClock()))


async def push(client: Client, wire: dict[str, Any]) -> int:
    resp = await client.post(
        "/api/v1/telemetry", data=codec.encode_wire(wire), headers={"Content-Type": "application/msgpack"}
    )
    return resp.status


async def test_pushed_events_are_written_once_counted_and_shown(client: Client, tmp_path: Path) -> None:
    events = [event(1, level="FATAL"), event(2, message="<script>alert(1)</script>")]
    assert await push(client, wire_snapshot("V1", seq=1, events=events)) == 200
    assert await push(client, wire_snapshot("V1", seq=1, events=events)) == 200  # a retry
    assert await push(client, wire_snapshot("V1", seq=2, events=[event(i) for i in range(3, 9)])) == 200
    assert await push(client, wire_snapshot("V2", seq=1, events=[event(1)])) == 200
    records = lines(tmp_path / "events.jsonl")
    assert [r["event"]["id"] for r in records] == [
        "V1:boot-a:1",
        "V1:boot-a:2",
        "V1:boot-a:3",
        "V1:boot-a:4",
        "V2:boot-a:1",
    ]
    samples = parse_metrics(await (await client.get("/metrics")).text())
    assert sample(samples, "vehicle_log_events_total", vehicle_id="V1", level="FATAL") == 1
    assert sample(samples, "vehicle_log_events_total", vehicle_id="V1", level="ERROR") == 3
    assert sample(samples, "vehicle_log_events_total", vehicle_id="V2", level="ERROR") == 1
    assert sample(samples, "vehicle_log_events_dropped_total", reason="rate") == 4
    assert sample(samples, "vehicle_log_events_dropped_total", reason="write_failed") == 0
    vehicles = {v["vehicle_id"]: v for v in (await (await client.get("/api/v1/vehicles")).json())["vehicles"]}
    assert [e["id"] for e in vehicles["V1"]["events"]] == [f"V1:boot-a:{i}" for i in range(1, 5)]
    assert vehicles["V2"]["events"][0]["code"] == "VEH-NAV-001"
    page = await (await client.get("/")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page


async def test_the_watermark_is_kept_in_the_boot_record(client: Client) -> None:
    assert await push(client, wire_snapshot("V1", boot_id="b1", seq=1, events=[event(1), event(2)])) == 200
    record = client.app[RUNTIME].fleet.get("V1").boots["b1"]  # type: ignore[index,union-attr]
    assert record.event_seq == 2 and client.app[RUNTIME].fleet.dirty  # type: ignore[index]


async def test_a_refused_push_writes_no_event(client: Client, tmp_path: Path) -> None:
    wire = wire_snapshot("V1", events=[event(1)], battery={"percentage": 500.0, "voltage": 1.0, "age_s": 0.0})
    assert await push(client, wire) == 422
    assert not (tmp_path / "events.jsonl").exists()
