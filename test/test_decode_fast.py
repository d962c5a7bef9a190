"""The one-pass decoder (ingest.decode_snapshot, msgspec) against today's two steps (codec.decode, then
parse_snapshot): for any body, hostile ones included, the same snapshot or the same refusal (class and detail);
the fast path never accepts what the two steps refuse. And the bytes a bridge sends go through the fast path."""

from __future__ import annotations

import math
import struct
from dataclasses import fields
from typing import Any

import msgpack
import pytest
from hostile_corpus import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import wire_snapshot
from test_codec_ingest import _with, full_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import ingest
from tvm_observability.aggregator.ingest import IngestLimits, decode_fast, decode_snapshot, parse_snapshot
from tvm_observability.errors import MalformedBody, TelemetryError
from tvm_observability.model import (
    EVENT_LEVELS,
    EVENT_SOURCES,
    NAME_PATTERN,
    SENSOR_STATUSES,
    VEHICLE_ID_PATTERN,
    Battery,
    LinkOutage,
    LinkReport,
    Pose,
    Position,
    SensorReport,
    VehicleEvent,
    VehicleSnapshot,
)

DEFAULT_LIMITS = IngestLimits()
_MANY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def slow(body: bytes, limits: IngestLimits) -> VehicleSnapshot | TelemetryError:
    try:
        return parse_snapshot(codec.decode(body), limits)
    except TelemetryError as exc:
        return exc


def assert_agree(body: bytes, limits: IngestLimits = DEFAULT_LIMITS) -> VehicleSnapshot | TelemetryError:
    """decode_fast accepts only what the two steps accept, as the same snapshot (types included); decode_snapshot
    answers exactly as they do. Returns their answer."""
    expected = slow(body, limits)
    fast = decode_fast(body, limits)
    if fast is not None:
        assert isinstance(expected, VehicleSnapshot), (body, expected)
        assert fast == expected and repr(fast) == repr(expected)
    try:
        answer: VehicleSnapshot | TelemetryError = decode_snapshot(body, limits)
    except TelemetryError as exc:
        answer = exc
    if isinstance(expected, TelemetryError):
        assert type(answer) is type(expected) and answer.detail == expected.detail  # type: ignore[union-attr]
    else:
        assert answer == expected and repr(answer) == repr(expected)
    return expected


# -- what a bridge sends ------------------------------------------------------------------------------------------


def events() -> tuple[VehicleEvent, ...]:
    return (
        VehicleEvent(1, 1.8e9, "ERROR", "diagnostic", "lidar: driver", "no scans", "diag:lidar", (("hz", "0"),)),
        VehicleEvent(2, 1_800_000_001.0, "FATAL", "rosout", "/planner", "é" * 200, None, (), "p.cpp", "plan", 12),
    )


@pytest.mark.parametrize(
    "snap",
    [
        full_snapshot(),
        VehicleSnapshot("V9", "b", 0, 1.5),
        VehicleSnapshot(
            "V1",
            "boot-a",
            2**63 - 1,
            1e11,
            "idle",
            Battery(100.0, 0.0, None, 0.0),
            Position(52.5, 13.4, None, True, 0.2, accuracy_m=2.5),
            Pose(0.0, 0.0, -1e3, 1e3, "", 1e9),
            {f"s{i}": SensorReport("warn", None, "m" * 256) for i in range(4)},
            {f"E{i}": 2**53 for i in range(10)},
            events(),
        ),
    ],
    ids=["full", "bare", "limits-and-events"],
)
def test_what_a_bridge_sends_goes_through_the_fast_path_both_ways(snap: VehicleSnapshot) -> None:
    """The bridge's encoding (codec.encode: msgpack) decodes through msgspec to the same snapshot, and that
    snapshot encodes back to the very same bytes."""
    body = codec.encode(snap)
    decoded = decode_fast(body)
    assert decoded is not None and decoded == snap == assert_agree(body)
    assert codec.encode(decoded) == body


def test_the_fast_path_knows_every_field_of_the_model() -> None:
    """A field added to the model (and to parse_snapshot) needs its struct field in ingest.py, or every push that
    carries it takes the slow path."""
    pairs = [
        (ingest._WireSnapshot, VehicleSnapshot),
        (ingest._WireBattery, Battery),
        (ingest._WirePosition, Position),
        (ingest._WirePose, Pose),
        (ingest._WireSensor, SensorReport),
        (ingest._WireEvent, VehicleEvent),
        (ingest._WireLink, LinkReport),
        (ingest._WireOutage, LinkOutage),
    ]
    for struct_type, model in pairs:
        wire_names = set(struct_type.__struct_fields__) - {"v"}
        assert wire_names == {f.name for f in fields(model)}, model.__name__


def _without_frame_id() -> dict[str, Any]:
    wire = wire_snapshot()
    del wire["pose"]["frame_id"]
    return wire


@pytest.mark.parametrize("wire", [_with("sensors.lidar.message", None), _without_frame_id()], ids=["nil", "absent"])
def test_nil_or_absent_where_the_model_has_no_such_value_takes_the_slow_path(wire: dict[str, Any]) -> None:
    """The validator takes a nil sensor message and an absent frame_id as ""; msgspec, decoding into the model's
    dataclasses, takes neither, so these bodies (which no bridge sends) take the slow path, to the same snapshot."""
    body = codec.encode_wire(wire)
    assert decode_fast(body) is None
    assert isinstance(assert_agree(body), VehicleSnapshot)


# -- refusals: the same class and detail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("vehicle_id", "V 1"),
        ("vehicle_id", "V1\n"),
        ("seq", True),
        ("seq", 2**63),
        ("sent_at", math.nan),
        ("sent_at", 1e11 + 1),
        ("status", "idle\n"),
        ("battery.charging", 1),
        ("battery.percentage", True),
        ("position.latitude", None),
        ("pose.frame_id", "f" * 65),
        ("sensors.lidar.status", "ok\n"),
        ("sensors.lidar.message", "m" * 257),
        ("errors", {"E1": True}),
        ("errors", {"E1": 2**53 + 1}),
        ("v", 2),
        ("v", True),
        ("events", [{"event_seq": 0}]),
    ],
)
def test_refusals_are_named_as_before(path: str, value: Any) -> None:
    body = codec.encode_wire(_with(path, value))
    assert decode_fast(body) is None
    assert isinstance(assert_agree(body), TelemetryError)


def test_cardinality_guards_are_kept() -> None:
    limits = IngestLimits(max_sensors=1, max_error_codes=1, max_events=1)
    for wire in (
        wire_snapshot(),
        wire_snapshot(errors={"E1": 1, "E2": 1}, sensors={}),
        wire_snapshot(events=[event.to_wire() for event in events()], sensors={}),
    ):
        body = codec.encode_wire(wire)
        assert decode_fast(body, limits) is None
        assert isinstance(assert_agree(body, limits), TelemetryError)


def _repeated_key_map(entries: int) -> bytes:
    """A top-level map whose header counts `entries` entries, all the shortest key there is."""
    return b"\xde" + struct.pack(">H", entries) + (msgpack.packb("v") + msgpack.packb(1)) * entries


def test_a_map_over_the_codec_limit_is_malformed_even_if_its_keys_repeat() -> None:
    """msgspec lets a struct's keys repeat; codec.decode counts the header. The fast path's body-size guard
    leaves every such body to the codec: the shortest one is longer than the guard."""
    body = _repeated_key_map(codec.MAX_CONTAINER + 1)
    assert len(body) > ingest._FAST_BODY_MAX
    assert decode_fast(body) is None
    assert isinstance(assert_agree(body), MalformedBody)
    valid = msgpack.packb(wire_snapshot(), use_bin_type=True)
    repeated = _repeated_key_map(codec.MAX_CONTAINER - 30)[3:]  # entries to splice into a valid body's top map
    spliced = b"\xde" + struct.pack(">H", codec.MAX_CONTAINER + 1) + repeated + valid[1:]
    assert isinstance(assert_agree(spliced), MalformedBody)


@pytest.mark.parametrize(
    "body",
    [
        b"\x81\xaavehicle_id\xa3V\xed\xa0\x80",  # a UTF-16 surrogate encoded in UTF-8: not valid UTF-8
        b"\x81\xa1v\xd4\x05\x00",  # an ext value for v
        b"\x81\xa1v\xd6\xff\x00\x00\x00\x01",  # a msgpack timestamp for v
        codec.encode_wire(wire_snapshot()) + b"\xc0",  # trailing data
        codec.encode_wire(wire_snapshot())[:-1],  # truncated
    ],
)
def test_bodies_the_codec_refuses(body: bytes) -> None:
    assert decode_fast(body) is None
    assert_agree(body)


@pytest.mark.parametrize("case", [c for c in CORPUS if c.path.endswith("/telemetry")], ids=lambda c: c.name)
def test_every_body_of_the_hostile_corpus_gets_the_same_answer(case: Any) -> None:
    assert_agree(case.payload())


# -- properties ---------------------------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8") | st.sampled_from(list("\n\r\x00\u202e é")), max_size=20)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(width=32)
    | _text
    | st.binary(max_size=8)
    | st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 100, 100.5, 1e11, -0.0, ""])
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4), max_leaves=12
)
_names = st.from_regex(NAME_PATTERN, fullmatch=True)


def _number(low: float, high: float) -> st.SearchStrategy[Any]:
    return st.floats(low, high) | st.integers(math.ceil(low), math.floor(high)) | st.sampled_from([low, high])


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


_event = st.fixed_dictionaries(
    {
        "event_seq": st.integers(1, 2**63 - 1),
        "stamp": _number(0, 1e11),
        "level": st.sampled_from(EVENT_LEVELS),
        "source": st.sampled_from(EVENT_SOURCES),
        "component": st.text(max_size=8),
        "message": st.text(max_size=8),
    },
    optional={
        "code": _maybe(_names),
        "key_values": _maybe(st.lists(st.lists(st.text(max_size=4), min_size=2, max_size=2), max_size=3)),
        "file": _maybe(st.text(max_size=8)),
        "function": _maybe(st.text(max_size=8)),
        "line": _maybe(st.integers(0, 2**31 - 1)),
    },
)
_link = st.fixed_dictionaries(
    {
        "failed_attempts_total": st.integers(0, 2**53),
        "outages_total": st.integers(0, 2**53),
        "outage_seconds_total": _number(0, 1e11),
    },
    optional={
        "rtt_s": _maybe(_number(0, 3600)),
        "last_outage": _maybe(
            st.fixed_dictionaries(
                {"started_at": _number(0, 1e11)},
                optional={
                    "ended_at": _maybe(_number(0, 1e11)),
                    "start_lat": _maybe(_number(-90, 90)),
                    "start_lon": _maybe(_number(-180, 180)),
                    "end_lat": _maybe(_number(-90, 90)),
                    "end_lon": _maybe(_number(-180, 180)),
                },
            )
        ),
    },
)
_valid_wire = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "vehicle_id": st.from_regex(VEHICLE_ID_PATTERN, fullmatch=True),
        "boot_id": st.from_regex(VEHICLE_ID_PATTERN, fullmatch=True),
        "seq": st.integers(0, 2**63 - 1),
        "sent_at": _number(0, 1e11),
    },
    optional={
        "status": _maybe(_names),
        "battery": _maybe(
            st.fixed_dictionaries(
                {"age_s": _number(0, 1e9)},
                optional={
                    "percentage": _maybe(_number(0, 100)),
                    "voltage": _maybe(_number(0, 1000)),
                    "charging": _maybe(st.booleans()),
                },
            )
        ),
        "position": _maybe(
            st.fixed_dictionaries(
                {"fix": st.booleans(), "age_s": _number(0, 1e9)},
                optional={
                    "latitude": _maybe(_number(-90, 90)),
                    "longitude": _maybe(_number(-180, 180)),
                    "altitude": _maybe(_number(-1e5, 1e6)),
                    "accuracy_m": _maybe(_number(0, 1e6)),
                },
            )
        ),
        "pose": _maybe(
            st.fixed_dictionaries(
                {
                    "x": _number(-1e9, 1e9),
                    "y": _number(-1e9, 1e9),
                    "yaw": _number(-1e3, 1e3),
                    "speed": _number(0, 1e3),
                    "age_s": _number(0, 1e9),
                },
                optional={"frame_id": st.text(max_size=8)},
            )
        ),
        "sensors": _maybe(
            st.dictionaries(
                _names,
                st.fixed_dictionaries(
                    {"status": st.sampled_from(SENSOR_STATUSES)},
                    optional={"rate_hz": _maybe(_number(0, 1e6)), "message": _maybe(st.text(max_size=8))},
                ),
                max_size=4,
            )
        ),
        "errors": _maybe(st.dictionaries(_names, st.integers(0, 2**53), max_size=4)),
        "events": _maybe(st.lists(_event, max_size=3)),
        "link": _maybe(_link),
    },
)
_limits = st.builds(IngestLimits, st.integers(0, 4), st.integers(0, 4), st.integers(0, 3))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a wire value: map keys and list indices, nested."""
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found += _paths(child, (*prefix, key))
    return found


@st.composite
def _mutated_wire(draw: st.DrawFn) -> Any:
    """A valid wire with a few places replaced by hostile values, deleted, or given an unknown key beside them."""
    wire = draw(_valid_wire)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(wire)
        if not paths:
            break
        *parents, leaf = draw(st.sampled_from(paths))
        target = wire
        for key in parents:
            target = target[key]
        action = draw(st.sampled_from(["replace", "delete", "unknown"]))
        if action == "replace":
            target[leaf] = draw(_values)
        elif action == "delete" and isinstance(target, dict):
            del target[leaf]
        elif isinstance(target, dict):
            target[draw(_text)] = draw(_values)
    return wire


def _header(kind: str, count: int, small: int, wide: bytes) -> bytes:
    """A msgpack map (small=0x80, wide=0xde) or array (0x90, 0xdc) header, in the form drawn when it fits."""
    if kind == "fix" and count <= 15:
        return bytes([small | count])
    if kind == "16" and count < 2**16:
        return wide + struct.pack(">H", count)
    return bytes([wide[0] + 1]) + struct.pack(">I", count)


def _emit(value: Any, draw: st.DrawFn) -> bytes:
    """msgpack bytes of a wire value as a careless or hostile encoder might write them: maps with a key repeated
    (another value before or after), wider headers than needed, strings as bin, floats as float32."""
    if isinstance(value, dict):
        entries = [_emit(k, draw) + _emit(v, draw) for k, v in value.items()]
        if value and draw(st.integers(0, 3)) == 0:
            key = draw(st.sampled_from(list(value)))
            again = draw(st.just(value[key]) | _values)
            entries.insert(draw(st.integers(0, len(entries))), _emit(key, draw) + _emit(again, draw))
        return _header(draw(st.sampled_from(["fix", "16", "32"])), len(entries), 0x80, b"\xde") + b"".join(entries)
    if isinstance(value, list):
        items = [_emit(item, draw) for item in value]
        return _header(draw(st.sampled_from(["fix", "16", "32"])), len(items), 0x90, b"\xdc") + b"".join(items)
    if isinstance(value, str) and draw(st.integers(0, 30)) == 0:
        return msgpack.packb(value.encode("utf-8", "surrogatepass"), use_bin_type=True)
    if isinstance(value, float) and draw(st.integers(0, 10)) == 0:
        return b"\xca" + struct.pack(">f", value) if math.isnan(value) or abs(value) < 3e38 else msgpack.packb(value)
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


@_MANY
@given(_valid_wire, _limits)
def test_valid_snapshots_agree(wire: dict[str, Any], limits: IngestLimits) -> None:
    assert_agree(codec.encode_wire(wire), limits)
    assert_agree(codec.encode_wire(wire))


@_MANY
@given(_mutated_wire(), _limits)
def test_hostile_fields_agree(wire: Any, limits: IngestLimits) -> None:
    assert_agree(msgpack.packb(wire, use_bin_type=True), limits)


@_MANY
@given(_valid_wire | _mutated_wire(), st.data())
def test_hostile_encodings_agree(wire: Any, data: st.DataObject) -> None:
    assert_agree(_emit(wire, data.draw))


@_MANY
@given(st.binary(max_size=600) | st.builds(msgpack.packb, _values), st.data())
def test_arbitrary_bytes_agree(noise: bytes, data: st.DataObject) -> None:
    body = bytearray(codec.encode_wire(data.draw(_valid_wire)))
    start = data.draw(st.integers(0, len(body)))
    length = data.draw(st.integers(0, len(noise)))
    body[start : start + length] = noise
    assert_agree(bytes(body))
    assert_agree(noise)
