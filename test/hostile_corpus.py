"""The hostile-request corpus: every request a broken or malicious client might send, with the answer it must get.

Each case names its class (the rows of docs/reliability.md), the request (method, path, headers, body bytes)
and the expected status and rejection `reason` (the label of telemetry_snapshots_rejected_total; None where
the router answers before the ingest handler, e.g. 404/405, which http_requests_total counts by status).
`test_hostile.py` sends each to a real aggregator process and checks the answer, the counter, that the fleet
state did not change and that /metrics still parses.

The aggregator under test has the roster V1, V2, V3 and already holds V1 and V2 at boot `boot-a`, seq 10, so
every body here uses a newer seq: if validation let one through, the state would change and the test would see it.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from support import wire_snapshot

from tvm_observability import codec

BASE_SEQ = 10
"""The seq of the snapshots V1 and V2 hold before the corpus runs."""


def valid_wire(vehicle_id: str = "V1", seq: int = BASE_SEQ + 1, boot_id: str = "boot-a") -> dict[str, Any]:
    """A valid schema-v1 snapshot, distinct in every value from the baseline (so acceptance would show)."""
    return wire_snapshot(
        vehicle_id,
        boot_id=boot_id,
        seq=seq,
        status="on_mission",
        battery={"percentage": 42.0, "voltage": 24.1, "charging": True, "age_s": 0.3},
        position={"latitude": 48.1, "longitude": 11.5, "altitude": 520.0, "fix": True, "age_s": 0.1},
        pose={"x": 1.0, "y": 2.0, "yaw": 0.5, "speed": 1.2, "frame_id": "map", "age_s": 0.05},
        sensors={"lidar": {"status": "warn", "rate_hz": 4.0, "message": "low rate"}},
        errors={"motor_stall": 9, "estop": 2},
    )


def baseline_wire(vehicle_id: str) -> dict[str, Any]:
    """What V1 and V2 hold when the corpus starts (applied by the test before the first case)."""
    wire = valid_wire(vehicle_id, seq=BASE_SEQ)
    wire.update(status="idle", errors={"motor_stall": 3})
    return wire


def with_field(path: str, value: Any, *, vehicle_id: str = "V1", seq: int = BASE_SEQ + 1) -> bytes:
    """A valid snapshot with the dotted `path` set to `value` (or removed when value is _DELETE)."""
    wire = valid_wire(vehicle_id, seq)
    *parents, leaf = path.split(".")
    target = wire
    for key in parents:
        target = target[key]
    if value is _DELETE:
        target.pop(leaf)
    else:
        target[leaf] = value
    return codec.encode_wire(wire)


def with_key(section: str, key: Any, value: Any) -> bytes:
    """A valid snapshot with one extra entry `key: value` in the `sensors` or `errors` map."""
    wire = valid_wire()
    wire[section] = {**copy.deepcopy(wire[section]), key: value}
    return msgpack.packb(wire, use_bin_type=True)


_DELETE = object()
_ROUTE_V2 = {"X-Vehicle-Id": "V2"}


@dataclass(frozen=True)
class Case:
    """One hostile request and the answer it must get."""

    name: str
    kind: str
    """The input class (a row of the table in docs/reliability.md)."""
    body: bytes | Callable[[], bytes] = b""
    status: int = 400
    reason: str | None = None
    """The rejection reason counted; None when the router (404/405) or the HTTP parser (400) answers."""
    method: str = "POST"
    path: str = "/api/v1/telemetry"
    content_type: str | None = codec.CONTENT_TYPE
    auth: str | None = "V1"
    """Whose token goes in `Authorization: Bearer`: a vehicle id (`V1+tail`: V1's valid token followed by
    `tail`), None for no header, or a raw header value when it starts with `raw:`."""
    headers: dict[str, str] = field(default_factory=dict)
    transport: str = "http"
    """http: one ordinary request; chunked: body sent with chunked encoding; stall: headers and a part of the
    body, then silence (slowloris); drip: the body one byte at a time, slower than the body timeout allows;
    slow_headers: a header line that never ends (the idle timeout closes the connection: status 0)."""

    def payload(self) -> bytes:
        return self.body() if callable(self.body) else self.body


def _malformed(name: str, body: bytes | Callable[[], bytes]) -> Case:
    return Case(name, "malformed msgpack", body, 400, "malformed")


def _schema(name: str, body: bytes | Callable[[], bytes], reason: str = "schema", kind: str = "wrong types") -> Case:
    return Case(name, kind, body, 422, reason)


def _injection(name: str, body: bytes | Callable[[], bytes]) -> Case:
    return Case(name, "label injection", body, 422, "schema")


def _event(seq: int, **fields: Any) -> dict[str, Any]:
    """A valid vehicle event; keyword arguments replace fields."""
    event: dict[str, Any] = {
        "event_seq": seq,
        "stamp": 1_800_000_000.0,
        "level": "ERROR",
        "source": "rosout",
        "component": "v1.planner",
        "message": "failed",
    }
    event.update(fields)
    return event


def _link(**fields: Any) -> dict[str, Any]:
    return {"failed_attempts_total": 1, "outages_total": 1, "outage_seconds_total": 2.0, **fields}


def _valid_body() -> bytes:
    return codec.encode_wire(valid_wire())


def _body_of(vehicle_id: str) -> Callable[[], bytes]:
    return lambda: codec.encode_wire(valid_wire(vehicle_id))


def _garbage() -> bytes:
    return random.Random(5).randbytes(512)


def _nested(depth: int, opener: bytes, closer: bytes = b"\xc0") -> bytes:
    return opener * depth + closer


INJECTIONS: dict[str, str] = {
    "quote_brace": 'V1"} 1\nfake_metric{a="b',
    "newline": "V1\nvehicle_up 1",
    "help_line": "# HELP vehicle_up pwned",
    "backslash": "V1\\",
    "braces": 'lidar{x="1"}',
    "space": "V 1",
    "unicode_letter": "V\u00e9hicule",
    "zero_width": "V1\u200b",
    "rtl_override": "V1\u202e",
    "nul": "V1\x00",
    "emoji": "V1\U0001f916",
    "equals_comma": "a=b,c",
}
"""Strings built to break the text exposition if they ever reached a label value unescaped."""

_LABEL_FIELDS: dict[str, Callable[[str], bytes]] = {
    "vehicle_id": lambda s: with_field("vehicle_id", s),
    "boot_id": lambda s: with_field("boot_id", s),
    "status": lambda s: with_field("status", s),
    "sensor_name": lambda s: with_key("sensors", s, {"status": "ok", "rate_hz": 1.0, "message": ""}),
    "error_code": lambda s: with_key("errors", s, 1),
}
"""Every string of a push that can become a label (boot_id cannot, but it is checked the same way)."""

_INJECTION_CASES = [
    _injection(f"injection {label_field} {name}", (lambda f=maker, s=text: f(s)))
    for label_field, maker in _LABEL_FIELDS.items()
    for name, text in INJECTIONS.items()
]


CORPUS: list[Case] = [
    # -- malformed and truncated msgpack -------------------------------------------------------------
    _malformed("empty body", b""),
    _malformed("truncated to half", lambda: _valid_body()[: len(_valid_body()) // 2]),
    _malformed("truncated by one byte", lambda: _valid_body()[:-1]),
    _malformed("random bytes", _garbage),
    _malformed("trailing data after the document", lambda: _valid_body() + b"\x00"),
    _malformed("two documents", lambda: _valid_body() * 2),
    _malformed("reserved byte 0xc1", b"\xc1"),
    _malformed("str32 header claiming 4 GiB", b"\xdb\xff\xff\xff\xff"),
    _malformed("array32 header claiming 4 billion items", b"\xdd\xff\xff\xff\xff"),
    _malformed("map32 header claiming 4 billion entries", b"\xdf\xff\xff\xff\xff"),
    _malformed("bin32 header claiming 4 GiB", b"\xc6\xff\xff\xff\xff"),
    _malformed("deeply nested arrays", _nested(20_000, b"\x91")),
    _malformed("deeply nested maps", _nested(10_000, b"\x81\xa1a")),
    _malformed("integer map keys", lambda: msgpack.packb({1: 2, "v": 1})),
    _malformed("invalid UTF-8 in a string", lambda: b"\x81\xa1v" + b"\xa2\xff\xfe"),
    _malformed("JSON sent as msgpack", b'{"v": 1, "vehicle_id": "V1"}'),
    _malformed("string longer than any field allows", lambda: with_field("sensors.lidar.message", "x" * 50_000)),
    _malformed(
        "map with more entries than any snapshot", lambda: with_field("errors", {f"e{i}": 1 for i in range(2000)})
    ),
    # -- wrong types, missing keys, unsupported versions --------------------------------------------
    _schema("top level is an array", lambda: msgpack.packb([1, "V1", "boot-a", 11])),
    _schema("top level is an integer", lambda: msgpack.packb(1)),
    _schema("top level is nil", lambda: msgpack.packb(None)),
    _schema("v missing", lambda: with_field("v", _DELETE)),
    _schema("v as a string", lambda: with_field("v", "1")),
    _schema("v as a boolean", lambda: with_field("v", True)),
    Case("v from the future", "wrong types", lambda: with_field("v", 2), 422, "unsupported_version"),
    _schema("vehicle_id missing", lambda: with_field("vehicle_id", _DELETE)),
    _schema("vehicle_id as an integer", lambda: with_field("vehicle_id", 1)),
    _schema("vehicle_id as bytes", lambda: with_field("vehicle_id", b"V1")),
    _schema("vehicle_id empty", lambda: with_field("vehicle_id", "")),
    _schema("vehicle_id of 65 characters", lambda: with_field("vehicle_id", "V" * 65)),
    _schema("vehicle_id as an ext type", lambda: with_field("vehicle_id", msgpack.ExtType(5, b"V1"))),
    _schema("seq as a float", lambda: with_field("seq", 11.5)),
    _schema("seq as a string", lambda: with_field("seq", "11")),
    _schema("sent_at as a msgpack timestamp", lambda: with_field("sent_at", msgpack.Timestamp(1_700_000_000))),
    _schema("battery as a list", lambda: with_field("battery", [42.0])),
    _schema("battery.charging as a string", lambda: with_field("battery.charging", "yes")),
    _schema("battery.age_s missing", lambda: with_field("battery.age_s", _DELETE)),
    _schema("position.fix as an integer", lambda: with_field("position.fix", 1)),
    _schema("position fix without coordinates", lambda: with_field("position.latitude", None)),
    _schema("pose.frame_id of 100 characters", lambda: with_field("pose.frame_id", "f" * 100)),
    _schema("sensors as a list", lambda: with_field("sensors", ["lidar"])),
    _schema("sensor status not in the set", lambda: with_field("sensors.lidar.status", "fine")),
    _schema("sensor message of 300 characters", lambda: with_field("sensors.lidar.message", "m" * 300)),
    _schema("error count as a float", lambda: with_field("errors.motor_stall", 9.0)),
    _schema("error count as a string", lambda: with_field("errors.motor_stall", "9")),
    # -- NaN, infinities, negative and huge numbers --------------------------------------------------
    _schema("sent_at NaN", lambda: with_field("sent_at", float("nan")), "non_finite", "NaN/Inf"),
    _schema("sent_at +Inf", lambda: with_field("sent_at", float("inf")), "non_finite", "NaN/Inf"),
    _schema("sent_at -Inf", lambda: with_field("sent_at", float("-inf")), "non_finite", "NaN/Inf"),
    _schema("battery.percentage NaN", lambda: with_field("battery.percentage", float("nan")), "non_finite", "NaN/Inf"),
    _schema("battery.voltage -Inf", lambda: with_field("battery.voltage", float("-inf")), "non_finite", "NaN/Inf"),
    _schema("position.latitude +Inf", lambda: with_field("position.latitude", float("inf")), "non_finite", "NaN/Inf"),
    _schema("pose.yaw NaN", lambda: with_field("pose.yaw", float("nan")), "non_finite", "NaN/Inf"),
    _schema("sensor rate NaN", lambda: with_field("sensors.lidar.rate_hz", float("nan")), "non_finite", "NaN/Inf"),
    _schema("seq negative", lambda: with_field("seq", -1), "out_of_range", "numbers out of range"),
    _schema("seq 2**64-1", lambda: with_field("seq", 2**64 - 1), "out_of_range", "numbers out of range"),
    _schema("sent_at negative", lambda: with_field("sent_at", -1.0), "out_of_range", "numbers out of range"),
    _schema("sent_at 1e300", lambda: with_field("sent_at", 1e300), "out_of_range", "numbers out of range"),
    _schema("battery 150 %", lambda: with_field("battery.percentage", 150.0), "out_of_range", "numbers out of range"),
    _schema("latitude 91", lambda: with_field("position.latitude", 91.0), "out_of_range", "numbers out of range"),
    _schema("pose.x 1e300", lambda: with_field("pose.x", 1e300), "out_of_range", "numbers out of range"),
    _schema("speed negative", lambda: with_field("pose.speed", -1.0), "out_of_range", "numbers out of range"),
    _schema(
        "error count negative", lambda: with_field("errors.motor_stall", -1), "out_of_range", "numbers out of range"
    ),
    _schema(
        "error count 2**60", lambda: with_field("errors.motor_stall", 2**60), "out_of_range", "numbers out of range"
    ),
    _schema("input age negative", lambda: with_field("pose.age_s", -0.5), "out_of_range", "numbers out of range"),
    # -- cardinality: huge maps within the body limit ------------------------------------------------
    _schema(
        "100 sensors",
        lambda: with_field("sensors", {f"s{i}": {"status": "ok"} for i in range(100)}),
        "limit_sensors",
        "huge maps and strings",
    ),
    _schema(
        "100 error codes",
        lambda: with_field("errors", {f"e{i}": 1 for i in range(100)}),
        "limit_error_codes",
        "huge maps and strings",
    ),
    # -- vehicle error events (issue 14): bounded, every field checked ---------------------------------
    _schema("200 events", lambda: with_field("events", [_event(i) for i in range(1, 201)]), "limit_events", "events"),
    _schema("events not a list", lambda: with_field("events", {"1": _event(1)}), kind="events"),
    _schema(
        "event message of 3,000 characters",
        lambda: with_field("events", [_event(1, message="x" * 3_000)]),
        kind="events",
    ),
    _schema(
        "event with 1,000 key-values",
        lambda: with_field("events", [_event(1, key_values=[["k", "v"]] * 1000)]),
        kind="events",
    ),
    _schema("event level INFO", lambda: with_field("events", [_event(1, level="INFO")]), kind="events"),
    _schema("event seq 0", lambda: with_field("events", [_event(1, event_seq=0)]), "out_of_range", "events"),
    _schema("event stamp NaN", lambda: with_field("events", [_event(1, stamp=float("nan"))]), "non_finite", "events"),
    _schema("event code with a newline", lambda: with_field("events", [_event(1, code="E1\nE2")]), kind="events"),
    _schema("event component as bytes", lambda: with_field("events", [_event(1, component=b"node")]), kind="events"),
    # -- the vehicle's view of its link (optional, added in 0.2.0): every field checked -----------------
    _schema("link not a map", lambda: with_field("link", [1, 2]), kind="link"),
    _schema("link counts as a string", lambda: with_field("link", _link(failed_attempts_total="9")), kind="link"),
    _schema("link negative outages", lambda: with_field("link", _link(outages_total=-1)), "out_of_range", "link"),
    _schema(
        "link outage seconds NaN",
        lambda: with_field("link", _link(outage_seconds_total=float("nan"))),
        "non_finite",
        "link",
    ),
    _schema("link RTT of a day", lambda: with_field("link", _link(rtt_s=86400.0)), "out_of_range", "link"),
    _schema(
        "link outage at latitude 91",
        lambda: with_field("link", _link(last_outage={"started_at": 1.0, "start_lat": 91.0})),
        "out_of_range",
        "link",
    ),
    # -- label injection in every string that can reach a label --------------------------------------
    *_INJECTION_CASES,
    # -- oversized bodies ----------------------------------------------------------------------------
    Case("body over the limit with Content-Length", "oversized bodies", b"\x00" * 70_000, 413, "too_large"),
    Case("body over the limit, chunked", "oversized bodies", b"\x00" * 70_000, 413, "too_large", transport="chunked"),
    Case(
        "Content-Length of 1 TB announced",
        "oversized bodies",
        b"",
        413,
        "too_large",
        headers={"Content-Length": str(10**12)},
        transport="stall",
    ),
    # -- slow bodies -----------------------------------------------------------------------------------
    Case(
        "slowloris: part of the body, then silence", "slow bodies", _valid_body, 408, "body_timeout", transport="stall"
    ),
    Case("body dripped one byte at a time", "slow bodies", _valid_body, 408, "body_timeout", transport="drip"),
    Case("headers dripped one byte at a time (closed, no answer)", "slow bodies", b"", 0, transport="slow_headers"),
    # -- wrong methods, paths and content types ----------------------------------------------------
    Case(
        "Content-Type application/json",
        "wrong content types",
        _valid_body,
        415,
        "content_type",
        content_type="application/json",
    ),
    Case("Content-Type text/plain", "wrong content types", _valid_body, 415, "content_type", content_type="text/plain"),
    Case("no Content-Type", "wrong content types", _valid_body, 415, "content_type", content_type=None),
    Case(
        "Content-Type multipart",
        "wrong content types",
        _valid_body,
        415,
        "content_type",
        content_type="multipart/form-data; boundary=x",
    ),
    Case("GET on the ingest path", "wrong methods", b"", 405, method="GET"),
    Case("PUT on the ingest path", "wrong methods", _valid_body, 405, method="PUT"),
    Case("DELETE on the ingest path", "wrong methods", b"", 405, method="DELETE"),
    Case("made-up method (refused by the HTTP parser)", "wrong methods", _valid_body, 400, method="FROBNICATE"),
    Case("WebDAV method", "wrong methods", _valid_body, 405, method="PROPFIND"),
    Case("TRACE", "wrong methods", b"", 405, method="TRACE"),
    Case("POST to /metrics", "wrong methods", _valid_body, 405, path="/metrics"),
    *(
        Case(
            f"GET /metrics, Accept: {accept}",
            "odd Accept headers",
            b"",
            200,
            method="GET",
            path="/metrics",
            content_type=None,
            headers={"Accept": accept},
        )
        for accept in (
            "application/openmetrics-text; version=abc",
            "application/openmetrics-text; version=9.9.9; escaping=bogus",
            "text/plain; version=x.y",
            "application/openmetrics-text;;;version",
        )
    ),
    Case("POST to an unknown API version", "wrong methods", _valid_body, 404, path="/api/v2/telemetry"),
    Case("path traversal", "wrong methods", _valid_body, 404, path="/api/v1/../../etc/passwd"),
    # -- credentials -----------------------------------------------------------------------------------
    Case("no Authorization header", "credentials", _valid_body, 401, "unauthenticated", auth=None),
    Case("wrong token", "credentials", _valid_body, 401, "unauthenticated", auth="raw:Bearer not-a-real-token"),
    Case("Basic instead of Bearer", "credentials", _valid_body, 401, "unauthenticated", auth="raw:Basic VjE6cGFzcw=="),
    Case("empty bearer token", "credentials", _valid_body, 401, "unauthenticated", auth="raw:Bearer "),
    Case("the token's sha256 as the token", "credentials", _valid_body, 401, "unauthenticated", auth="hash:V1"),
    Case("4 KB token", "credentials", _valid_body, 401, "unauthenticated", auth="raw:Bearer " + "t" * 4000),
    Case("V2's valid token writing V1", "credentials", _valid_body, 403, "forbidden", auth="V2"),
    Case("V3's valid token writing V2", "credentials", _body_of("V2"), 403, "forbidden", auth="V3"),
    Case("vehicle not on the roster", "credentials", _body_of("V9"), 403, "unknown_vehicle"),
    # -- unauthenticated pushes: one answer, whatever the body says (no roster enumeration, no schema detail) ---
    Case("token with non-UTF-8 bytes", "credentials", _valid_body, 401, "unauthenticated", auth="raw:Bearer \xff\xfe"),
    Case("Basic with non-UTF-8 bytes", "credentials", _valid_body, 401, "unauthenticated", auth="raw:Basic \xff=="),
    Case(
        "wrong token, vehicle off the roster",
        "credentials",
        _body_of("V9"),
        401,
        "unauthenticated",
        auth="raw:Bearer x",
    ),
    Case("no token, schema error", "credentials", lambda: with_field("seq", "x"), 401, "unauthenticated", auth=None),
    Case("wrong token, not msgpack", "credentials", _garbage, 401, "unauthenticated", auth="raw:Bearer nope"),
    # -- a valid token in a header line the HTTP parser refuses (it quotes the line in its log) ----------------
    *(
        Case(f"valid token followed by {name}", "malformed Authorization lines", _valid_body, 400, auth="V1+" + tail)
        for name, tail in (
            ("a control byte", "\x01"),
            ("DEL", "\x7f"),
            ("NUL", "\x00more"),
            ("9,000 bytes (over the header line limit)", "x" * 9000),
        )
    ),
    # -- the routing header (docs/decisions/0001-routing-key.md) -------------------------------------------------
    Case(
        "routing header names V2, token V1", "routing header", _valid_body, 400, "routing_mismatch", headers=_ROUTE_V2
    ),
    Case(
        "routing header and token V2, body V1",
        "routing header",
        _valid_body,
        400,
        "routing_mismatch",
        auth="V2",
        headers=_ROUTE_V2,
    ),
    Case(
        "routing header not a vehicle id",
        "routing header",
        _valid_body,
        400,
        "routing_mismatch",
        headers={"X-Vehicle-Id": "V1\u00e9 or 1=1"},
    ),
    # -- replayed and out-of-order sequences (acknowledged, ignored: a retry must not loop) ------------
    Case("replay of the applied snapshot", "replays", lambda: codec.encode_wire(baseline_wire("V1")), 200),
    Case("older seq with other values", "replays", lambda: codec.encode_wire(valid_wire(seq=BASE_SEQ - 5)), 200),
    Case("seq 0 with a higher error count", "replays", lambda: codec.encode_wire(valid_wire(seq=0)), 200),
    Case(
        "V2 replayed with its own token",
        "replays",
        lambda: codec.encode_wire(valid_wire("V2", seq=BASE_SEQ)),
        200,
        auth="V2",
    ),
]
