"""Schema-v1 validation: a push body -> VehicleSnapshot, or a typed error. Pure, no I/O.

Unknown keys are ignored (newer vehicles may add fields); every known key is checked
for type, range and finiteness, so nothing NaN, infinite or oversized reaches the fleet state.

Two paths, one answer. `parse_snapshot` is the validator: it checks decoded msgpack values field by field
and names the first problem. `decode_snapshot`, what the app calls, first tries `decode_fast`: msgspec checks
the body against the `_Wire*` structs below (every check of the validator as a type or constraint, in C), then
decodes it straight into the model's dataclasses. Whatever that path cannot accept (any refusal, an unknown
key, a body too large for its guards) goes to codec.decode + parse_snapshot, which give the refusal or the
result, as before. The fast path never accepts what the validator refuses and gives the same snapshot when
both accept (test/test_decode_fast.py). A new wire field goes into both: its check in parse_snapshot, its
field in the `_Wire*` struct beside it (a test fails until it is there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta

from .. import codec
from ..errors import (
    NonFinite,
    OutOfRange,
    SchemaError,
    TooManyErrorCodes,
    TooManyEvents,
    TooManySensors,
    UnsupportedVersion,
)
from ..model import (
    EVENT_LEVELS,
    EVENT_SOURCES,
    MAX_EVENT_KEY_VALUES,
    MAX_EVENT_MESSAGE_CHARS,
    MAX_EVENT_TEXT_CHARS,
    MAX_MESSAGE_CHARS,
    NAME_PATTERN,
    SCHEMA_VERSION,
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

MAX_SEQ = 2**63 - 1
MAX_RTT_S = 3600.0
"""Longest push round-trip time a vehicle may report."""
MAX_ERROR_COUNT = 2**53
"""Counts above this would lose precision as Prometheus floats."""
MAX_FRAME_ID_CHARS = 64


class _Range(NamedTuple):
    """The closed interval a number field must lie in (both paths check against the same one)."""

    low: float
    high: float


class _IntRange(NamedTuple):
    low: int
    high: int


_TIME = _Range(0.0, 1e11)
_AGE = _Range(0.0, 1e9)
_PERCENTAGE = _Range(0.0, 100.0)
_VOLTAGE = _Range(0.0, 1000.0)
_LATITUDE = _Range(-90.0, 90.0)
_LONGITUDE = _Range(-180.0, 180.0)
_ALTITUDE = _Range(-1e5, 1e6)
_ACCURACY = _Range(0.0, 1e6)
_PLANAR = _Range(-1e9, 1e9)
_YAW = _Range(-1e3, 1e3)
_SPEED = _Range(0.0, 1e3)
_RATE = _Range(0.0, 1e6)
_SEQ = _IntRange(0, MAX_SEQ)
_ERROR_COUNT = _IntRange(0, MAX_ERROR_COUNT)
_EVENT_SEQ = _IntRange(1, MAX_SEQ)
_LINE = _IntRange(0, 2**31 - 1)
_RTT = _Range(0.0, MAX_RTT_S)


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Per-push cardinality guards: a push carrying more is refused (422); these are the defaults of the
    config's `limits.max_sensors_per_vehicle` and `limits.max_error_codes_per_push`."""

    max_sensors: int = 32
    """Sensors in one push."""
    max_error_codes: int = 64
    """Error codes in one push."""
    max_events: int = 100
    """Vehicle events in one push."""


def parse_snapshot(raw: Any, limits: IngestLimits = IngestLimits()) -> VehicleSnapshot:
    """Validate one decoded push body; raise a SchemaError, UnsupportedVersion or LimitExceeded (errors.py)."""
    top = _map(raw, "body")
    version = top.get("v")
    if type(version) is not int:
        raise SchemaError("v: must be the integer schema version")
    if version != SCHEMA_VERSION:
        raise UnsupportedVersion(
            f"v: schema version {version} is not supported (this aggregator speaks {SCHEMA_VERSION})"
        )
    sensors = _optional_map(top.get("sensors"), "sensors")
    errors = _optional_map(top.get("errors"), "errors")
    if len(sensors) > limits.max_sensors:
        raise TooManySensors(f"sensors: {len(sensors)} sensors, at most {limits.max_sensors}")
    if len(errors) > limits.max_error_codes:
        raise TooManyErrorCodes(f"errors: {len(errors)} error codes, at most {limits.max_error_codes}")
    events = top.get("events")
    if events is not None and not isinstance(events, list):
        raise SchemaError("events: must be a list")
    if events is not None and len(events) > limits.max_events:
        raise TooManyEvents(f"events: {len(events)} events, at most {limits.max_events}")
    return VehicleSnapshot(
        vehicle_id=_pattern(top.get("vehicle_id"), "vehicle_id", VEHICLE_ID_PATTERN),
        boot_id=_pattern(top.get("boot_id"), "boot_id", VEHICLE_ID_PATTERN),
        seq=_int(top.get("seq"), "seq", *_SEQ),
        sent_at=_number(top.get("sent_at"), "sent_at", *_TIME),
        status=_optional_status(top.get("status")),
        battery=_optional(top.get("battery"), "battery", _battery),
        position=_optional(top.get("position"), "position", _position),
        pose=_optional(top.get("pose"), "pose", _pose),
        sensors={
            _pattern(name, "sensors key", NAME_PATTERN): _sensor(report, f"sensors.{name}")
            for name, report in sensors.items()
        },
        errors={
            _pattern(code, "errors key", NAME_PATTERN): _int(count, f"errors.{code}", *_ERROR_COUNT)
            for code, count in errors.items()
        },
        events=tuple(_event(raw, f"events[{i}]") for i, raw in enumerate(events or ())),
        link=_optional(top.get("link"), "link", _link),
    )


def _event(raw: Any, path: str) -> VehicleEvent:
    m = _map(raw, path)
    level = m.get("level")
    if level not in EVENT_LEVELS:
        raise SchemaError(f"{path}.level: must be one of {', '.join(EVENT_LEVELS)}")
    source = m.get("source")
    if source not in EVENT_SOURCES:
        raise SchemaError(f"{path}.source: must be one of {', '.join(EVENT_SOURCES)}")
    code = m.get("code")
    pairs = m.get("key_values")
    if pairs is None:
        pairs = []
    if not isinstance(pairs, list) or len(pairs) > MAX_EVENT_KEY_VALUES:
        raise SchemaError(f"{path}.key_values: must be a list of at most {MAX_EVENT_KEY_VALUES} [key, value] pairs")
    key_values = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, list) or len(pair) != 2:
            raise SchemaError(f"{path}.key_values[{i}]: must be a [key, value] pair")
        key_values.append((_text(pair[0], f"{path}.key_values[{i}]"), _text(pair[1], f"{path}.key_values[{i}]")))
    line = m.get("line")
    return VehicleEvent(
        event_seq=_int(m.get("event_seq"), f"{path}.event_seq", *_EVENT_SEQ),
        stamp=_number(m.get("stamp"), f"{path}.stamp", *_TIME),
        level=level,
        source=source,
        component=_text(m.get("component"), f"{path}.component"),
        message=_text(m.get("message"), f"{path}.message", MAX_EVENT_MESSAGE_CHARS),
        code=None if code is None else _pattern(code, f"{path}.code", NAME_PATTERN),
        key_values=tuple(key_values),
        file=_optional_text(m.get("file"), f"{path}.file"),
        function=_optional_text(m.get("function"), f"{path}.function"),
        line=None if line is None else _int(line, f"{path}.line", *_LINE),
    )


def _link(m: Mapping[str, Any], path: str) -> LinkReport:
    """The vehicle's view of its link (optional, added in 0.2.0): cumulative counts of its boot, the last RTT,
    the ongoing or last outage."""
    return LinkReport(
        failed_attempts_total=_int(m.get("failed_attempts_total"), f"{path}.failed_attempts_total", *_ERROR_COUNT),
        outages_total=_int(m.get("outages_total"), f"{path}.outages_total", *_ERROR_COUNT),
        outage_seconds_total=_number(m.get("outage_seconds_total"), f"{path}.outage_seconds_total", *_TIME),
        rtt_s=_optional_number(m.get("rtt_s"), f"{path}.rtt_s", *_RTT),
        last_outage=_optional(m.get("last_outage"), f"{path}.last_outage", _outage),
    )


def _outage(m: Mapping[str, Any], path: str) -> LinkOutage:
    # An end before the start is the vehicle's clock stepping back (NTP) during the outage: kept as reported.
    return LinkOutage(
        started_at=_number(m.get("started_at"), f"{path}.started_at", *_TIME),
        ended_at=_optional_number(m.get("ended_at"), f"{path}.ended_at", *_TIME),
        start_lat=_optional_number(m.get("start_lat"), f"{path}.start_lat", *_LATITUDE),
        start_lon=_optional_number(m.get("start_lon"), f"{path}.start_lon", *_LONGITUDE),
        end_lat=_optional_number(m.get("end_lat"), f"{path}.end_lat", *_LATITUDE),
        end_lon=_optional_number(m.get("end_lon"), f"{path}.end_lon", *_LONGITUDE),
    )


def _text(raw: Any, path: str, limit: int = MAX_EVENT_TEXT_CHARS) -> str:
    if not isinstance(raw, str) or len(raw) > limit:
        raise SchemaError(f"{path}: must be a string of at most {limit} characters")
    return raw


def _optional_text(raw: Any, path: str) -> str | None:
    return None if raw is None else _text(raw, path)


def _battery(m: Mapping[str, Any], path: str) -> Battery:
    charging = m.get("charging")
    if charging is not None and type(charging) is not bool:
        raise SchemaError(f"{path}.charging: must be a boolean or nil")
    return Battery(
        percentage=_optional_number(m.get("percentage"), f"{path}.percentage", *_PERCENTAGE),
        voltage=_optional_number(m.get("voltage"), f"{path}.voltage", *_VOLTAGE),
        charging=charging,
        age_s=_age(m, path),
    )


def _position(m: Mapping[str, Any], path: str) -> Position:
    fix = m.get("fix")
    if type(fix) is not bool:
        raise SchemaError(f"{path}.fix: must be a boolean")
    latitude = _optional_number(m.get("latitude"), f"{path}.latitude", *_LATITUDE)
    longitude = _optional_number(m.get("longitude"), f"{path}.longitude", *_LONGITUDE)
    if fix and (latitude is None or longitude is None):
        raise SchemaError(f"{path}: a fix needs both latitude and longitude")
    return Position(
        latitude=latitude,
        longitude=longitude,
        altitude=_optional_number(m.get("altitude"), f"{path}.altitude", *_ALTITUDE),
        fix=fix,
        age_s=_age(m, path),
        accuracy_m=_optional_number(m.get("accuracy_m"), f"{path}.accuracy_m", *_ACCURACY),
    )


def _pose(m: Mapping[str, Any], path: str) -> Pose:
    frame_id = m.get("frame_id", "")
    if not isinstance(frame_id, str) or len(frame_id) > MAX_FRAME_ID_CHARS:
        raise SchemaError(f"{path}.frame_id: must be a string of at most {MAX_FRAME_ID_CHARS} characters")
    return Pose(
        x=_number(m.get("x"), f"{path}.x", *_PLANAR),
        y=_number(m.get("y"), f"{path}.y", *_PLANAR),
        yaw=_number(m.get("yaw"), f"{path}.yaw", *_YAW),
        speed=_number(m.get("speed"), f"{path}.speed", *_SPEED),
        frame_id=frame_id,
        age_s=_age(m, path),
    )


def _sensor(raw: Any, path: str) -> SensorReport:
    m = _map(raw, path)
    status = m.get("status")
    if status not in SENSOR_STATUSES:
        raise SchemaError(f"{path}.status: must be one of {', '.join(SENSOR_STATUSES)}")
    message = m.get("message", "")
    if message is None:
        message = ""
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise SchemaError(f"{path}.message: must be a string of at most {MAX_MESSAGE_CHARS} characters")
    return SensorReport(
        status=status,
        rate_hz=_optional_number(m.get("rate_hz"), f"{path}.rate_hz", *_RATE),
        message=message,
    )


def _optional_status(raw: Any) -> str | None:
    if raw is None:
        return None
    return _pattern(raw, "status", NAME_PATTERN)


def _age(m: Mapping[str, Any], path: str) -> float:
    return _number(m.get("age_s"), f"{path}.age_s", *_AGE)


def _map(raw: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise SchemaError(f"{path}: must be a map")
    return raw


def _optional_map(raw: Any, path: str) -> Mapping[str, Any]:
    return {} if raw is None else _map(raw, path)


def _optional(raw: Any, path: str, parse: Any) -> Any:
    return None if raw is None else parse(_map(raw, path), path)


def _pattern(raw: Any, path: str, pattern: Any) -> str:
    if not isinstance(raw, str) or pattern.fullmatch(raw) is None:
        raise SchemaError(f"{path}: must match {pattern.pattern}")
    return raw


def _int(raw: Any, path: str, low: int, high: int) -> int:
    if type(raw) is not int:
        raise SchemaError(f"{path}: must be an integer")
    if not low <= raw <= high:
        raise OutOfRange(f"{path}: {raw} is outside [{low}, {high}]")
    return raw


def _number(raw: Any, path: str, low: float, high: float) -> float:
    if type(raw) not in (int, float):
        raise SchemaError(f"{path}: must be a number")
    value = float(raw)
    if not math.isfinite(value):
        raise NonFinite(f"{path}: must be finite")
    if not low <= value <= high:
        raise OutOfRange(f"{path}: {value} is outside [{low}, {high}]")
    return value


def _optional_number(raw: Any, path: str, low: float, high: float) -> float | None:
    return None if raw is None else _number(raw, path, low, high)


# -- the fast path: msgspec, with every check above as a type or constraint --------------------------------------------


def decode_snapshot(body: bytes, limits: IngestLimits = IngestLimits()) -> VehicleSnapshot:
    """Decode and validate one push body: the snapshot, or the refusal (MalformedBody and the errors of
    parse_snapshot) exactly as codec.decode + parse_snapshot give it."""
    return decode_fast(body, limits) or parse_snapshot(codec.decode(body), limits)


def decode_fast(body: bytes, limits: IngestLimits = IngestLimits()) -> VehicleSnapshot | None:
    """The snapshot if msgspec accepts the body; None if it does not or cannot tell (the body is then for
    codec.decode + parse_snapshot to judge)."""
    if len(body) > _FAST_BODY_MAX:
        return None
    try:
        _CHECKED.decode(body)  # every type and constraint of parse_snapshot; the structs themselves are not kept
        snap = _BUILT.decode(body)  # the same body straight into the model's dataclasses
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec < 0.23 lets the latter through undressed
        return None  # ValidationError is a DecodeError; so is a nil or absent value the dataclasses do not take
    if len(snap.sensors) > limits.max_sensors or len(snap.errors) > limits.max_error_codes:
        return None
    if len(snap.events) > limits.max_events:
        return None
    position = snap.position
    if position is not None and position.fix and (position.latitude is None or position.longitude is None):
        return None
    return snap


_FAST_BODY_MAX = 3 * codec.MAX_CONTAINER
"""Largest body the fast path takes. codec.decode refuses a map whose header counts more than MAX_CONTAINER entries
even if they repeat one key, msgspec lets a struct's keys repeat (the last wins, as in a dict): every entry of a
struct's map is a known key of at least one character (2 bytes as msgpack) and a value (at least 1 byte), so a
body this short cannot hold such a map. Dicts and lists carry the bound themselves (their length is checked
against the header); every string of the schema is far below codec.MAX_STR."""


def _anchored(pattern: re.Pattern[str]) -> str:
    """A pattern that msgspec (which searches) matches only as a whole, as parse_snapshot's fullmatch does."""
    return rf"\A(?:{pattern.pattern})\Z"


def _within(bounds: _Range | _IntRange) -> Meta:
    return Meta(ge=bounds.low, le=bounds.high)


_Name = Annotated[str, Meta(pattern=_anchored(NAME_PATTERN))]
_Id = Annotated[str, Meta(pattern=_anchored(VEHICLE_ID_PATTERN))]
_Text = Annotated[str, Meta(max_length=MAX_EVENT_TEXT_CHARS)]
if TYPE_CHECKING:
    _SensorStatus = str
    _EventLevel = str
    _EventSource = str
else:  # the model's tuples as Literals: a lookup in C, where a pattern would call re
    _SensorStatus, _EventLevel, _EventSource = Literal[SENSOR_STATUSES], Literal[EVENT_LEVELS], Literal[EVENT_SOURCES]
_Age = Annotated[float, _within(_AGE)]
_Time = Annotated[float, _within(_TIME)]


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """A map of the schema: an unknown key sends the body to parse_snapshot (which ignores it, after codec.decode
    has held the key's value to its limits)."""


class _WireBattery(_Wire):
    age_s: _Age
    percentage: Annotated[float, _within(_PERCENTAGE)] | None = None
    voltage: Annotated[float, _within(_VOLTAGE)] | None = None
    charging: bool | None = None


class _WirePosition(_Wire):
    fix: bool
    age_s: _Age
    latitude: Annotated[float, _within(_LATITUDE)] | None = None
    longitude: Annotated[float, _within(_LONGITUDE)] | None = None
    altitude: Annotated[float, _within(_ALTITUDE)] | None = None
    accuracy_m: Annotated[float, _within(_ACCURACY)] | None = None


class _WirePose(_Wire):
    x: Annotated[float, _within(_PLANAR)]
    y: Annotated[float, _within(_PLANAR)]
    yaw: Annotated[float, _within(_YAW)]
    speed: Annotated[float, _within(_SPEED)]
    age_s: _Age
    frame_id: Annotated[str, Meta(max_length=MAX_FRAME_ID_CHARS)] = ""


class _WireSensor(_Wire):
    status: _SensorStatus
    rate_hz: Annotated[float, _within(_RATE)] | None = None
    message: Annotated[str, Meta(max_length=MAX_MESSAGE_CHARS)] | None = ""


class _WireEvent(_Wire):
    event_seq: Annotated[int, _within(_EVENT_SEQ)]
    stamp: _Time
    level: _EventLevel
    source: _EventSource
    component: _Text
    message: Annotated[str, Meta(max_length=MAX_EVENT_MESSAGE_CHARS)]
    code: _Name | None = None
    key_values: Annotated[list[tuple[_Text, _Text]], Meta(max_length=MAX_EVENT_KEY_VALUES)] | None = None
    file: _Text | None = None
    function: _Text | None = None
    line: Annotated[int, _within(_LINE)] | None = None


class _WireOutage(_Wire):
    started_at: _Time
    ended_at: _Time | None = None
    start_lat: Annotated[float, _within(_LATITUDE)] | None = None
    start_lon: Annotated[float, _within(_LONGITUDE)] | None = None
    end_lat: Annotated[float, _within(_LATITUDE)] | None = None
    end_lon: Annotated[float, _within(_LONGITUDE)] | None = None


class _WireLink(_Wire):
    failed_attempts_total: Annotated[int, _within(_ERROR_COUNT)]
    outages_total: Annotated[int, _within(_ERROR_COUNT)]
    outage_seconds_total: _Time
    rtt_s: Annotated[float, _within(_RTT)] | None = None
    last_outage: _WireOutage | None = None


class _WireSnapshot(_Wire):
    v: Annotated[int, Meta(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]
    vehicle_id: _Id
    boot_id: _Id
    seq: Annotated[int, _within(_SEQ)]
    sent_at: _Time
    status: _Name | None = None
    battery: _WireBattery | None = None
    position: _WirePosition | None = None
    pose: _WirePose | None = None
    sensors: Annotated[dict[_Name, _WireSensor], Meta(max_length=codec.MAX_CONTAINER)] | None = None
    errors: (
        Annotated[dict[_Name, Annotated[int, _within(_ERROR_COUNT)]], Meta(max_length=codec.MAX_CONTAINER)] | None
    ) = None
    events: Annotated[list[_WireEvent], Meta(max_length=codec.MAX_CONTAINER)] | None = None
    link: _WireLink | None = None


_CHECKED = msgspec.msgpack.Decoder(_WireSnapshot)
_BUILT = msgspec.msgpack.Decoder(VehicleSnapshot)
