"""Wire codec and schema-v1 validation: pure functions, every refusal typed with its status and reason."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from support import wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator.ingest import IngestLimits, parse_snapshot
from tvm_observability.errors import LimitExceeded, MalformedBody, SchemaError, TelemetryError, UnsupportedVersion
from tvm_observability.model import Battery, LinkOutage, LinkReport, Pose, Position, SensorReport, VehicleSnapshot


def full_snapshot() -> VehicleSnapshot:
    return VehicleSnapshot(
        vehicle_id="V1",
        boot_id="b-1",
        seq=7,
        sent_at=1_800_000_000.25,
        status="on_mission",
        battery=Battery(percentage=None, voltage=24.5, charging=True, age_s=0.3),
        position=Position(latitude=None, longitude=None, altitude=None, fix=False, age_s=2.0),
        pose=Pose(x=1.0, y=-2.0, yaw=3.1, speed=0.7, frame_id="odom", age_s=0.01),
        sensors={"lidar": SensorReport("stale", 0.0, "no scans for 3.0 s"), "imu": SensorReport("ok", 100.0)},
        errors={"E_LIDAR_TIMEOUT": 3, "diag:camera": 1},
    )


def test_round_trip_keeps_every_field() -> None:
    snap = full_snapshot()
    assert parse_snapshot(codec.decode(codec.encode(snap))) == snap


def test_optional_sections_may_be_nil_or_absent() -> None:
    wire = {"v": 1, "vehicle_id": "V9", "boot_id": "b", "seq": 0, "sent_at": 1.5}
    snap = parse_snapshot(codec.decode(codec.encode_wire(wire)))
    assert snap.status is None and snap.battery is None and snap.position is None and snap.pose is None
    assert dict(snap.sensors) == {} and dict(snap.errors) == {}


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    wire = wire_snapshot(extra_field={"anything": [1, 2]})
    wire["battery"]["temperature"] = 31.0
    assert parse_snapshot(wire).vehicle_id == "V1"


def test_snapshot_is_immutable() -> None:
    snap = full_snapshot()
    with pytest.raises(TypeError):
        snap.errors["E_NEW"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        snap.seq = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        codec.encode_wire(wire_snapshot())[:-5],  # truncated
        codec.encode_wire(wire_snapshot()) + b"\x00",  # trailing data
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the unpacker's stack
        msgpack.packb({1: 2}),  # non-string map key
        b"\xdb\xff\xff\xff\xff" + b"a" * 16,  # str32 claiming 4 GiB
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion entries
        msgpack.packb("x" * 5000),  # longer string than any field allows
    ],
    ids=["empty", "reserved-byte", "truncated", "trailing", "deep", "int-key", "huge-str", "huge-map", "long-str"],
)
def test_malformed_bodies_raise_malformed(body: bytes) -> None:
    with pytest.raises(MalformedBody) as info:
        codec.decode(body)
    assert info.value.status == 400 and info.value.reason == "malformed"


def _with(path: str, value: Any) -> dict[str, Any]:
    wire = wire_snapshot()
    *parents, last = path.split(".")
    target = wire
    for key in parents:
        target = target[key]
    target[last] = value
    return wire


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("vehicle_id", "V 1", "schema"),
        ("vehicle_id", "", "schema"),
        ("vehicle_id", "x" * 65, "schema"),
        ("vehicle_id", 7, "schema"),
        ("boot_id", None, "schema"),
        ("seq", -1, "out_of_range"),
        ("seq", 1.5, "schema"),
        ("seq", True, "schema"),
        ("sent_at", "now", "schema"),
        ("sent_at", math.nan, "non_finite"),
        ("sent_at", math.inf, "non_finite"),
        ("status", "bad status", "schema"),
        ("status", 3, "schema"),
        ("battery", [1, 2], "schema"),
        ("battery.percentage", 100.5, "out_of_range"),
        ("battery.percentage", -0.1, "out_of_range"),
        ("battery.percentage", math.nan, "non_finite"),
        ("battery.voltage", -math.inf, "non_finite"),
        ("battery.charging", 1, "schema"),
        ("battery.age_s", -1.0, "out_of_range"),
        ("battery.age_s", None, "schema"),
        ("position.latitude", 90.5, "out_of_range"),
        ("position.longitude", -180.01, "out_of_range"),
        ("position.latitude", None, "schema"),  # fix without coordinates
        ("position.fix", "yes", "schema"),
        ("position.accuracy_m", -0.5, "out_of_range"),
        ("position.accuracy_m", math.inf, "non_finite"),
        ("position.accuracy_m", "2m", "schema"),
        ("pose.x", math.inf, "non_finite"),
        ("pose.speed", -1.0, "out_of_range"),
        ("pose.frame_id", "f" * 65, "schema"),
        ("sensors", [], "schema"),
        ("sensors.lidar", "ok", "schema"),
        ("sensors.lidar.status", "broken", "schema"),
        ("sensors.lidar.rate_hz", math.nan, "non_finite"),
        ("sensors.lidar.message", "m" * 257, "schema"),
        ("errors", {"E1": -1}, "out_of_range"),
        ("errors", {"E1": 2**60}, "out_of_range"),
        ("errors", {"E1": 1.0}, "schema"),
        ("errors", {'bad"code': 1}, "schema"),
        ("errors", {"line\nbreak": 1}, "schema"),
        ("sensors", {"lidar}": {"status": "ok"}}, "schema"),
    ],
)
def test_schema_violations_are_refused_with_reason(path: str, value: Any, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse_snapshot(_with(path, value))
    assert info.value.reason == reason
    assert info.value.status == 422
    assert path.split(".", maxsplit=1)[0] in info.value.detail


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_body_must_be_a_map(body: Any) -> None:
    with pytest.raises(SchemaError):
        parse_snapshot(body)


@pytest.mark.parametrize("version", [0, 2, 99])
def test_other_schema_versions_are_unsupported(version: int) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        parse_snapshot(wire_snapshot(v=version))
    assert info.value.reason == "unsupported_version"


def test_cardinality_guards_per_snapshot() -> None:
    limits = IngestLimits(max_sensors=2, max_error_codes=3)
    sensors = {f"s{i}": {"status": "ok"} for i in range(3)}
    with pytest.raises(LimitExceeded) as info:
        parse_snapshot(wire_snapshot(sensors=sensors), limits)
    assert info.value.reason == "limit_sensors"
    with pytest.raises(LimitExceeded) as info:
        parse_snapshot(wire_snapshot(errors={f"E{i}": 1 for i in range(4)}), limits)
    assert info.value.reason == "limit_error_codes"
    assert parse_snapshot(wire_snapshot(errors={f"E{i}": 1 for i in range(3)}), limits).errors["E2"] == 1


def test_errors_serialise_for_clients() -> None:
    err: TelemetryError = SchemaError("seq: must be an integer")
    assert err.to_json() == {"error": "schema", "detail": "seq: must be an integer"}


def test_fix_accuracy_is_optional_and_kept_when_sent() -> None:
    """Schema v1 grows by optional fields (decision 0006): a bridge without accuracy_m is unaffected."""
    assert parse_snapshot(wire_snapshot()).position.accuracy_m is None  # type: ignore[union-attr]
    position = {"latitude": 52.52, "longitude": 13.405, "altitude": None, "fix": True, "age_s": 0.2, "accuracy_m": 2.5}
    assert parse_snapshot(wire_snapshot(position=position)).position.accuracy_m == 2.5  # type: ignore[union-attr]


def _link_wire() -> dict[str, Any]:
    return {
        "failed_attempts_total": 12,
        "outages_total": 2,
        "outage_seconds_total": 95.5,
        "rtt_s": 0.083,
        "last_outage": {
            "started_at": 1_800_000_000.0,
            "ended_at": 1_800_000_060.0,
            "start_lat": 52.5,
            "start_lon": 13.4,
            "end_lat": None,
            "end_lon": None,
        },
    }


def test_link_view_round_trips_and_is_optional() -> None:
    """Schema v1 grows by optional fields (decision 0006): a bridge without `link` is unaffected."""
    assert parse_snapshot(wire_snapshot()).link is None
    snap = VehicleSnapshot(
        vehicle_id="V1",
        boot_id="b-1",
        seq=7,
        sent_at=1_800_000_100.0,
        link=LinkReport(3, 1, 12.5, rtt_s=0.2, last_outage=LinkOutage(1_800_000_000.0, None, 52.5, 13.4)),
    )
    assert parse_snapshot(codec.decode(codec.encode(snap))) == snap
    assert "link" not in VehicleSnapshot(vehicle_id="V1", boot_id="b", seq=1, sent_at=1.0).to_wire()
    minimal = {"failed_attempts_total": 0, "outages_total": 0, "outage_seconds_total": 0.0}
    assert parse_snapshot(wire_snapshot(link=minimal)).link == LinkReport(0, 0, 0.0)


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("link", [1], "schema"),
        ("link.failed_attempts_total", -1, "out_of_range"),
        ("link.failed_attempts_total", 2**60, "out_of_range"),
        ("link.failed_attempts_total", 1.0, "schema"),
        ("link.outages_total", None, "schema"),
        ("link.outage_seconds_total", math.inf, "non_finite"),
        ("link.outage_seconds_total", -0.5, "out_of_range"),
        ("link.rtt_s", math.nan, "non_finite"),
        ("link.rtt_s", 3601.0, "out_of_range"),
        ("link.rtt_s", "fast", "schema"),
        ("link.last_outage", "yesterday", "schema"),
        ("link.last_outage.started_at", None, "schema"),
        ("link.last_outage.ended_at", -1.0, "out_of_range"),
        ("link.last_outage.start_lat", 91.0, "out_of_range"),
        ("link.last_outage.start_lon", math.nan, "non_finite"),
        ("link.last_outage.end_lon", -180.5, "out_of_range"),
    ],
)
def test_link_violations_are_refused_with_reason(path: str, value: Any, reason: str) -> None:
    wire = wire_snapshot(link=_link_wire())
    *parents, last = path.split(".")
    target = wire
    for key in parents:
        target = target[key]
    target[last] = value
    with pytest.raises(SchemaError) as info:
        parse_snapshot(wire)
    assert info.value.reason == reason
    assert path in info.value.detail
