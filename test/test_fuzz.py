"""Property-based fuzzing of the wire decoder, the schema validator and the exposition (hypothesis).

Profiles: `ci` (the default, a few thousand cases over the suite) and `long` for a local soak:
    HYPOTHESIS_PROFILE=long .venv/bin/pytest test/test_fuzz.py --timeout=0
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from support import parse_metrics

from tvm_observability import codec
from tvm_observability.aggregator.collector import FleetCollector
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import IngestLimits, parse_snapshot
from tvm_observability.errors import MalformedBody, TelemetryError
from tvm_observability.model import NAME_PATTERN, SENSOR_STATUSES, VEHICLE_ID_PATTERN, VehicleSnapshot

settings.register_profile("ci", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# -- strategies ----------------------------------------------------------------------------------

_hostile_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from(list('"{}\\\n\r\t =,#\x00\u202e\u200b')), max_size=80
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _hostile_text
    | st.binary(max_size=40)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_hostile_text, inner, max_size=6),
    max_leaves=30,
)
_label_names = st.from_regex(NAME_PATTERN, fullmatch=True)
_finite = st.floats(allow_nan=False, allow_infinity=False)


def _in(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=low, max_value=high, allow_nan=False)


_valid_wire = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "vehicle_id": st.from_regex(VEHICLE_ID_PATTERN, fullmatch=True),
        "boot_id": st.from_regex(VEHICLE_ID_PATTERN, fullmatch=True),
        "seq": st.integers(0, 2**63 - 1),
        "sent_at": _in(0, 1e11),
        "status": st.none() | _label_names,
        "battery": st.none()
        | st.fixed_dictionaries(
            {
                "percentage": st.none() | _in(0, 100),
                "voltage": st.none() | _in(0, 1000),
                "charging": st.none() | st.booleans(),
                "age_s": _in(0, 1e9),
            }
        ),
        "pose": st.none()
        | st.fixed_dictionaries(
            {
                "x": _in(-1e9, 1e9),
                "y": _in(-1e9, 1e9),
                "yaw": _in(-1e3, 1e3),
                "speed": _in(0, 1e3),
                "frame_id": st.text(max_size=64),
                "age_s": _in(0, 1e9),
            }
        ),
        "sensors": st.dictionaries(
            _label_names,
            st.fixed_dictionaries(
                {
                    "status": st.sampled_from(SENSOR_STATUSES),
                    "rate_hz": st.none() | _in(0, 1e6),
                    "message": st.text(max_size=256),
                }
            ),
            max_size=8,
        ),
        "errors": st.dictionaries(_label_names, st.integers(0, 2**53), max_size=8),
    }
)


def _set_path(wire: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    target = wire
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            return wire
        target = child
    target[path[-1]] = value
    return wire


_FIELD_PATHS = [
    ["v"],
    ["vehicle_id"],
    ["boot_id"],
    ["seq"],
    ["sent_at"],
    ["status"],
    ["battery"],
    ["battery", "percentage"],
    ["battery", "voltage"],
    ["battery", "charging"],
    ["battery", "age_s"],
    ["pose"],
    ["pose", "x"],
    ["pose", "frame_id"],
    ["sensors"],
    ["errors"],
]


# -- properties ----------------------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_decode_arbitrary_bytes_raises_only_malformed(body: bytes) -> None:
    with contextlib.suppress(MalformedBody):
        codec.decode(body)


@given(st.binary(min_size=1, max_size=512), st.data())
def test_decode_valid_snapshot_with_corrupted_bytes(noise: bytes, data: st.DataObject) -> None:
    body = bytearray(codec.encode_wire(data.draw(_valid_wire)))
    start = data.draw(st.integers(0, len(body) - 1))
    body[start : start + len(noise)] = noise
    _validate_or_reject(bytes(body))


@given(_values)
def test_validator_accepts_only_clean_snapshots(raw: Any) -> None:
    _check_or_reject(raw)


@given(_valid_wire, st.sampled_from(_FIELD_PATHS), _values)
def test_one_bad_field_in_a_valid_snapshot(wire: dict[str, Any], path: list[str], value: Any) -> None:
    _check_or_reject(_set_path(wire, path, value))


@given(_valid_wire)
def test_valid_snapshots_round_trip(wire: dict[str, Any]) -> None:
    snap = parse_snapshot(codec.decode(codec.encode_wire(wire)), IngestLimits(max_sensors=8, max_error_codes=8))
    again = parse_snapshot(codec.decode(codec.encode(snap)), IngestLimits(max_sensors=8, max_error_codes=8))
    assert again == snap


@settings(max_examples=max(50, settings().max_examples // 10))
@given(st.lists(_valid_wire | _values, min_size=1, max_size=12))
def test_exposition_parses_whatever_was_pushed(bodies: list[Any]) -> None:
    """Whatever stream of bodies arrives, the accepted ones render into an exposition that parses."""
    fleet = FleetState(
        [], FleetSettings(statuses=("idle", "on_mission"), offline_after_s=15.0, max_unknown_vehicles=100)
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    for raw in bodies:
        try:
            fleet.apply(parse_snapshot(codec.decode(msgpack.packb(raw, use_bin_type=True))))
        except TelemetryError:
            continue
    samples = parse_metrics(generate_latest(registry).decode("utf-8"))
    for (name, labels), value in samples.items():
        assert not math.isnan(value), name
        for label, text in labels:
            pattern = VEHICLE_ID_PATTERN if label == "vehicle_id" else NAME_PATTERN
            assert pattern.fullmatch(text), (name, label, text)


def _validate_or_reject(body: bytes) -> None:
    try:
        raw = codec.decode(body)
    except MalformedBody:
        return
    _check_or_reject(raw)


def _check_or_reject(raw: Any) -> None:
    """parse_snapshot either refuses with a typed error or returns a snapshot that is safe to export."""
    try:
        snap = parse_snapshot(raw, IngestLimits())
    except TelemetryError as exc:
        assert 400 <= exc.status < 500
        assert exc.reason and exc.reason.replace("_", "").isalpha()
        return
    _assert_clean(snap)


def _assert_clean(snap: VehicleSnapshot) -> None:
    assert VEHICLE_ID_PATTERN.fullmatch(snap.vehicle_id)
    assert VEHICLE_ID_PATTERN.fullmatch(snap.boot_id)
    assert snap.status is None or NAME_PATTERN.fullmatch(snap.status)
    assert all(NAME_PATTERN.fullmatch(k) for k in (*snap.sensors, *snap.errors))
    numbers: list[float | None] = [snap.sent_at]
    for part in (snap.battery, snap.position, snap.pose):
        if part is not None:
            numbers += [getattr(part, f) for f in part.__slots__ if f not in ("frame_id", "fix", "charging")]
    numbers += [s.rate_hz for s in snap.sensors.values()]
    assert all(n is None or math.isfinite(n) for n in numbers)
    assert all(type(c) is int and 0 <= c <= 2**53 for c in snap.errors.values())
    assert 0 <= snap.seq < 2**63
