"""The aggregator app on a real server (ephemeral loopback port) with a real aiohttp client.

The clock is injected so heartbeat ages and offline transitions are exact, not slept for.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from log_capture import captured
from peers import require_binary
from support import FakeClock, parse_metrics, sample, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import state_image
from tvm_observability.aggregator.app import RUNTIME, _request_id, acknowledgement, make_app
from tvm_observability.aggregator.config import parse_config
from tvm_observability.aggregator.fleet import Outcome
from tvm_observability.aggregator.logs import LogSummary
from tvm_observability.auth import hash_token
from tvm_observability.model import VEHICLE_ID_PATTERN, VehicleSnapshot

TOKENS = {"V1": "token-one-" + "a" * 30, "V2": "token-two-" + "b" * 30}
Client = TestClient  # type: ignore[type-arg]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: MakeClient, clock: FakeClock) -> Client:
    config = parse_config(
        {
            "offline_after_s": 15,
            "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in TOKENS.items()},
            "limits": {"max_body_bytes": 4096, "max_error_codes_per_push": 3, "rate_limit_burst": 5},
        }
    )
    return await aiohttp_client(make_app(config, clock=clock))


async def post(
    client: Client,
    wire: Any,
    token: str | None = "V1",
    *,
    raw: bytes | None = None,
    content_type: str = "application/msgpack",
    **headers: str,
) -> ClientResponse:
    all_headers = {"Content-Type": content_type, **headers}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {TOKENS.get(token, token)}"
    body = raw if raw is not None else codec.encode_wire(wire)
    return await client.post("/api/v1/telemetry", data=body, headers=all_headers)


async def metrics(client: Client) -> dict[Any, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_metrics(await resp.text())


def fleet_image(client: Client) -> dict[str, Any]:
    image = state_image.to_image(client.app[RUNTIME].fleet)  # type: ignore[union-attr]
    image.pop("saved_at")
    return image


async def test_push_shows_in_metrics(client: Client) -> None:
    resp = await post(client, wire_snapshot("V1", errors={"E1": 2}))
    assert resp.status == 200
    assert (await resp.json())["status"] == "accepted"
    m = await metrics(client)
    assert sample(m, "vehicle_battery_level", vehicle_id="V1") == 76.5
    assert sample(m, "vehicle_latitude", vehicle_id="V1") == 52.52
    assert sample(m, "vehicle_longitude", vehicle_id="V1") == 13.405
    assert sample(m, "vehicle_status", vehicle_id="V1", status="idle") == 1
    assert sample(m, "vehicle_sensor_status", vehicle_id="V1", sensor="lidar", status="ok") == 1
    assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 2
    assert sample(m, "vehicles_online") == 1 and sample(m, "vehicles_total") == 2
    assert sample(m, "telemetry_snapshots_received_total") == 1
    assert sample(m, "http_requests_total", method="POST", endpoint="/api/v1/telemetry", status="200") == 1


async def test_roster_vehicle_present_before_first_contact(client: Client) -> None:
    m = await metrics(client)
    assert sample(m, "vehicle_status", vehicle_id="V2", status="offline") == 1
    assert sample(m, "vehicle_last_heartbeat_seconds_ago", vehicle_id="V2") == float("inf")
    assert sample(m, "vehicle_up", vehicle_id="V2") == 0


async def test_heartbeat_age_grows_and_vehicle_goes_offline(client: Client, clock: FakeClock) -> None:
    await post(client, wire_snapshot("V1"))
    clock.advance(7.0)
    m = await metrics(client)
    assert sample(m, "vehicle_last_heartbeat_seconds_ago", vehicle_id="V1") == pytest.approx(7.0)
    assert sample(m, "vehicle_up", vehicle_id="V1") == 1
    clock.advance(8.5)
    m = await metrics(client)
    assert sample(m, "vehicle_status", vehicle_id="V1", status="offline") == 1
    assert sample(m, "vehicle_status", vehicle_id="V1", status="idle") == 0
    assert sample(m, "vehicles_online") == 0
    # last known values stay visible for the operator looking for the vehicle
    assert sample(m, "vehicle_latitude", vehicle_id="V1") == 52.52


async def test_retries_are_idempotent(client: Client) -> None:
    wire = wire_snapshot("V1", seq=4, errors={"E1": 1})
    assert (await (await post(client, wire)).json())["status"] == "accepted"
    for _ in range(3):
        resp = await post(client, wire)
        assert resp.status == 200 and (await resp.json())["status"] == "duplicate"
    older = await post(client, wire_snapshot("V1", seq=3, errors={"E1": 1}, status="charging"))
    assert (await older.json())["status"] == "duplicate"
    m = await metrics(client)
    assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 1
    assert sample(m, "vehicle_status", vehicle_id="V1", status="idle") == 1
    assert sample(m, "telemetry_snapshots_duplicate_total") == 4


async def test_new_boot_keeps_counters_monotonic(client: Client) -> None:
    await post(client, wire_snapshot("V1", boot_id="first", seq=10, errors={"E1": 4}))
    await post(client, wire_snapshot("V1", boot_id="second", seq=1, errors={"E1": 1}))
    m = await metrics(client)
    assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 5
    assert sample(m, "vehicle_bridge_restarts_total", vehicle_id="V1") == 1


LONG = "x" * 5000


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"raw": b"\xc1\x00garbage"}, 400, "malformed"),
        ({"raw": codec.encode_wire({"v": 1, "vehicle_id": "V1"})[:-2]}, 400, "malformed"),
        ({"wire": wire_snapshot("V1", seq="1")}, 422, "schema"),
        ({"wire": wire_snapshot("V1", battery={"percentage": float("nan"), "age_s": 0})}, 422, "non_finite"),
        ({"wire": wire_snapshot("V1", sent_at=float("inf"))}, 422, "non_finite"),
        ({"wire": wire_snapshot("V1", battery={"percentage": 250, "age_s": 0})}, 422, "out_of_range"),
        ({"wire": wire_snapshot("V1", v=2)}, 422, "unsupported_version"),
        ({"wire": wire_snapshot("V1", errors={f"E{i}": 1 for i in range(4)})}, 422, "limit_error_codes"),
        ({"wire": wire_snapshot("V1", sensors={f"s{i}": {"status": "ok"} for i in range(40)})}, 422, "limit_sensors"),
        ({"wire": wire_snapshot("V9")}, 403, "unknown_vehicle"),
        ({"wire": wire_snapshot("V1"), "token": None}, 401, "unauthenticated"),
        ({"wire": wire_snapshot("V1"), "token": "guessed-token"}, 401, "unauthenticated"),
        ({"wire": wire_snapshot("V1"), "token": "V2"}, 403, "forbidden"),
        ({"wire": wire_snapshot("V1", status=LONG[:100])}, 422, "schema"),
        ({"wire": wire_snapshot("V1"), "X-Vehicle-Id": "V2"}, 400, "routing_mismatch"),
        ({"wire": wire_snapshot("V2"), "token": "V2", "X-Vehicle-Id": "V1"}, 400, "routing_mismatch"),
        ({"wire": wire_snapshot("V2"), "X-Vehicle-Id": "V1"}, 400, "routing_mismatch"),
        ({"raw": b"\x00" * 5000}, 413, "too_large"),
        ({"raw": b"not gzip at all", "Content-Encoding": "gzip"}, 400, "malformed"),
        ({"raw": b"not deflate either", "Content-Encoding": "deflate"}, 400, "malformed"),
        (
            {"raw": gzip.compress(codec.encode_wire(wire_snapshot("V1", seq=2))) + b"junk", "Content-Encoding": "gzip"},
            400,
            "malformed",
        ),
        ({"wire": wire_snapshot("V1"), "content_type": "application/json"}, 415, "content_type"),
    ],
)
async def test_bad_input_is_refused_counted_and_changes_nothing(
    client: Client, kwargs: dict[str, Any], status: int, reason: str
) -> None:
    await post(client, wire_snapshot("V1", seq=1, errors={"E1": 1}))
    before = fleet_image(client)
    wire = kwargs.pop("wire", None)
    resp = await post(client, wire, **kwargs)
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == reason and body["detail"]
    assert fleet_image(client) == before
    m = await metrics(client)
    assert sample(m, "telemetry_snapshots_rejected_total", reason=reason) == 1
    assert sample(m, "telemetry_snapshots_received_total") == 1
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


INGEST_LOGGER = "tvm_observability.aggregator.ingest"


async def test_rejections_are_logged_without_the_token(client: Client) -> None:
    with captured(INGEST_LOGGER, logging.WARNING) as logs:
        await post(client, wire_snapshot("V1"), token="V2")
        await post(client, wire_snapshot("V1"), token="wrong-" + "z" * 20)
    records = logs.records
    assert len(records) == 2
    assert records[0].reason == "forbidden" and records[0].vehicle_id == "V1"  # type: ignore[attr-defined]
    assert records[1].reason == "unauthenticated"  # type: ignore[attr-defined]
    text = logs.text + json.dumps([r.__dict__ for r in records], default=str)
    assert TOKENS["V2"] not in text and "z" * 20 not in text and TOKENS["V1"] not in text


def test_log_assertions_hold_with_a_non_propagating_logger_class() -> None:
    """Issue 11: launch_testing's pytest plugin installs a logger class that does not propagate, and `caplog`
    then saw nothing (pytest before 8.x attached its handler to the root logger only). The test above must pass
    all the same: a snippet (no conftest of ours involved) sets such a class first and runs it with pytest's
    logging plugin off, so nothing of caplog can help."""
    snippet = (
        "import logging, sys, pytest\n"
        "class NoPropagation(logging.Logger):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        self.propagate = False\n"
        "logging.setLoggerClass(NoPropagation)\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:logging', sys.argv[1]]))\n"
    )
    test = f"{__file__}::test_rejections_are_logged_without_the_token"
    result = subprocess.run(
        [sys.executable, "-c", snippet, test], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


async def test_rate_limit_per_vehicle_does_not_touch_others(client: Client) -> None:
    statuses = [(await post(client, wire_snapshot("V1", seq=i))).status for i in range(1, 9)]
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
    assert (await post(client, wire_snapshot("V2", seq=1), token="V2")).status == 200


async def test_unknown_routes_share_one_label(client: Client) -> None:
    for path in ("/nope", "/wp-admin", "/a/b/c"):
        assert (await client.get(path)).status == 404
    m = await metrics(client)
    assert sample(m, "http_requests_total", method="GET", endpoint="other", status="404") == 3


async def test_openmetrics_when_asked(client: Client) -> None:
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await resp.text()
    assert text.endswith("# EOF\n") and "# TYPE vehicle_errors counter" in text
    plain = await client.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")


async def test_metrics_answers_any_accept_header(client: Client) -> None:
    """Issue 10 item 3: an OpenMetrics Accept header with an unusual version was a 500."""
    for accept in (
        "application/openmetrics-text; version=abc",
        "text/plain; version=x",
        "application/openmetrics-text; version=7",
    ):
        resp = await client.get("/metrics", headers={"Accept": accept})
        assert resp.status == 200, accept
        parse_metrics((await resp.text()).replace("# EOF\n", ""))


async def test_health_endpoints(client: Client) -> None:
    assert (await (await client.get("/healthz")).json()) == {"alive": True}
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["persistence"] == "off"
    assert (await ready.json())["shard"] is None  # not sharded


@pytest.mark.peer
async def test_promtool_accepts_live_output(client: Client) -> None:
    promtool = require_binary("promtool")  # a CI run fails without it
    await post(client, wire_snapshot("V1", errors={"E1": 1}))
    await post(client, b"", raw=b"\xc1")
    body = await (await client.get("/metrics")).read()
    result = subprocess.run([promtool, "check", "metrics"], check=False, input=body, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", result


# -- credentials before the body (issue 10 items 12 and 13) -----------------------------------------


async def raw_status(client: Client, head: bytes, body: bytes = b"") -> int:
    """Send bytes no HTTP client library would send (a non-UTF-8 header value) and return the status."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split(b" ", 2)[1])
    finally:
        writer.close()


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe-not-utf-8", b"Bearer token-one-\xc3\xa9", b"Basic \xff\xff", b"Bearer \xe2\x80\xae"],
)
async def test_a_token_with_a_non_utf8_byte_is_401_not_500(client: Client, authorization: bytes) -> None:
    head = b"POST /api/v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
    head += b"Authorization: " + authorization + b"\r\n"
    assert await raw_status(client, head, codec.encode_wire(wire_snapshot("V1"))) == 401
    m = await metrics(client)
    assert sample(m, "telemetry_snapshots_rejected_total", reason="unauthenticated") == 1
    assert sample(m, "http_requests_total", method="POST", endpoint="/api/v1/telemetry", status="500") is None


async def test_read_auth_with_a_non_utf8_byte_is_401_not_500(aiohttp_client: MakeClient) -> None:
    config = parse_config({"read_auth": {"bearer_token_sha256": hash_token("reader-token")}})
    client = await aiohttp_client(make_app(config))
    for authorization in (b"Bearer \xff\xfe", b"Basic \xff\xfe", b"Basic " + b"\xc3\xa9" * 4):
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization + b"\r\n"
        assert await raw_status(client, head) == 401, authorization
    ok = await client.get("/metrics", headers={"Authorization": "Bearer reader-token"})
    assert ok.status == 200


@pytest.mark.parametrize("token", [None, "guessed-token", "token-one-" + "a" * 29])
async def test_unauthenticated_pushes_get_one_answer_whatever_the_body(client: Client, token: str | None) -> None:
    """A wrong token must not tell a roster vehicle (was 401) from an unknown one (was 403), nor reach the
    schema: the token is authenticated before the body is decoded."""
    bodies = {
        "roster vehicle": codec.encode_wire(wire_snapshot("V1")),
        "unknown vehicle": codec.encode_wire(wire_snapshot("V9")),
        "schema error": codec.encode_wire(wire_snapshot("V1", seq="one")),
        "not msgpack": b"\xc1garbage",
    }
    answers = {}
    for name, body in bodies.items():
        resp = await post(client, None, token, raw=body)
        answers[name] = (resp.status, await resp.json())
    assert {status for status, _ in answers.values()} == {401}, answers
    assert len({json.dumps(body, sort_keys=True) for _, body in answers.values()}) == 1, answers
    m = await metrics(client)
    assert sample(m, "telemetry_snapshots_rejected_total", reason="unauthenticated") == len(bodies)


async def test_routing_header_that_matches_is_accepted_and_its_absence_too(client: Client) -> None:
    assert (await post(client, wire_snapshot("V1", seq=1), **{"X-Vehicle-Id": "V1"})).status == 200
    assert (await post(client, wire_snapshot("V1", seq=2))).status == 200


async def test_routing_header_is_checked_against_the_body_without_auth(aiohttp_client: MakeClient) -> None:
    config = parse_config({"auth_required": False, "allow_unknown_vehicles": True})
    client = await aiohttp_client(make_app(config))
    assert (await post(client, wire_snapshot("U1"), None, **{"X-Vehicle-Id": "U1"})).status == 200
    resp = await post(client, wire_snapshot("U2"), None, **{"X-Vehicle-Id": "U1"})
    assert resp.status == 400 and (await resp.json())["error"] == "routing_mismatch"
    assert client.app[RUNTIME].fleet.get("U2") is None  # type: ignore[union-attr]


# -- the rate limiter's memory (issue 10 item 5) ----------------------------------------------------


async def test_refused_unknown_vehicles_leave_no_rate_limiter_entry(
    aiohttp_client: MakeClient, clock: FakeClock
) -> None:
    config = parse_config(
        {"auth_required": False, "allow_unknown_vehicles": True, "limits": {"max_unknown_vehicles": 3}}
    )
    client = await aiohttp_client(make_app(config, clock=clock))
    statuses = [(await post(client, wire_snapshot(f"U{i}"), None)).status for i in range(40)]
    assert statuses == [200] * 3 + [422] * 37
    limiter = client.app[RUNTIME].limiter  # type: ignore[union-attr]
    assert len(limiter) == 3


async def test_idle_rate_limiter_entries_expire(aiohttp_client: MakeClient, clock: FakeClock) -> None:
    config = parse_config({"auth_required": False, "allow_unknown_vehicles": True, "limits": {"rate_limit_burst": 5}})
    client = await aiohttp_client(make_app(config, clock=clock))
    for i in range(20):
        assert (await post(client, wire_snapshot(f"U{i}"), None)).status == 200
    limiter = client.app[RUNTIME].limiter  # type: ignore[union-attr]
    assert len(limiter) == 20
    clock.advance(60)  # every bucket has long refilled
    assert (await post(client, wire_snapshot("U0", seq=2), None)).status == 200
    assert len(limiter) == 1


async def test_refusals_are_counted_exactly_but_logged_at_a_bounded_rate(client: Client, clock: FakeClock) -> None:
    """Issue 10 item 4: one unauthenticated client wrote one WARNING per refused push (~1 MB/s of log)."""
    rt = client.app[RUNTIME]  # type: ignore[union-attr]
    rt.refusal_log = LogSummary(
        rt.refusal_log.logger, "push rejected", burst=3, interval_s=10, monotonic=clock.monotonic
    )
    with captured(INGEST_LOGGER, logging.WARNING) as logs:
        for _ in range(50):
            assert (await post(client, wire_snapshot("V1"), token="wrong-token")).status == 401
        for _ in range(5):
            assert (await post(client, wire_snapshot("V1", seq="x"))).status == 422
        clock.advance(11)  # the next refusal opens a new interval and writes the summary of the last one
        assert (await post(client, wire_snapshot("V1"), token="wrong-token")).status == 401
    m = await metrics(client)
    assert sample(m, "telemetry_snapshots_rejected_total", reason="unauthenticated") == 51
    assert sample(m, "telemetry_snapshots_rejected_total", reason="schema") == 5
    messages = [r.getMessage() for r in logs.records]
    assert sum(m.startswith("push rejected: bearer token not valid") for m in messages) == 3 + 1
    assert sum(m.startswith("push rejected: ") and "seq" in m for m in messages) == 3
    summaries = [r for r in logs.records if "more not logged" in r.getMessage()]
    assert len(summaries) == 1
    assert summaries[0].not_logged == {"schema": 2, "unauthenticated": 47}  # type: ignore[attr-defined]


async def test_a_vehicle_inventing_statuses_is_logged_at_a_bounded_rate(client: Client, clock: FakeClock) -> None:
    """Each new (vehicle, status) was one WARNING line, as fast as a client could send them; the export stays
    exact (`unknown`), and the log shows a few lines and then a summary."""
    with captured(INGEST_LOGGER, logging.WARNING) as logs:
        for seq in range(1, 41):
            clock.advance(1.0)  # within the vehicle's push rate: every push is accepted
            resp = await post(client, wire_snapshot("V1", seq=seq, status=f"invented_{seq}"))
            assert resp.status == 200
    status_lines = [r for r in logs.records if "outside the configured set" in r.getMessage()]
    assert 1 <= len(status_lines) <= 5
    m = await metrics(client)
    assert sample(m, "vehicle_status", vehicle_id="V1", status="unknown") == 1


@given(
    vehicle_id=st.from_regex(VEHICLE_ID_PATTERN, fullmatch=True),
    boot_id=st.from_regex(VEHICLE_ID_PATTERN, fullmatch=True),
    seq=st.integers(0, 2**63 - 1),
    outcome=st.sampled_from(list(Outcome)),
)
@settings(max_examples=300, deadline=None)
def test_acknowledgement_is_the_json_of_its_fields(vehicle_id: str, boot_id: str, seq: int, outcome: Outcome) -> None:
    """The push acknowledgement is formatted, not encoded: for every id the schema admits it must be exactly the
    JSON document of its fields, as json.dumps writes it."""
    snap = VehicleSnapshot(vehicle_id=vehicle_id, boot_id=boot_id, seq=seq, sent_at=1.0)
    expected = {"status": outcome.value, "vehicle_id": vehicle_id, "boot_id": boot_id, "seq": seq}
    assert acknowledgement(outcome, snap) == json.dumps(expected).encode()


def test_generated_request_ids_are_unique_and_sixteen_hex_digits() -> None:
    request = make_mocked_request("POST", "/api/v1/telemetry")
    ids = [_request_id(request) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    given_id = make_mocked_request("POST", "/api/v1/telemetry", headers={"X-Request-Id": "robot-7:req-42"})
    assert _request_id(given_id) == "robot-7:req-42"
    hostile = make_mocked_request("POST", "/api/v1/telemetry", headers={"X-Request-Id": 'x"\n{"level":"ERROR"}'})
    assert _request_id(hostile) != 'x"\n{"level":"ERROR"}' and len(_request_id(hostile)) == 16


async def test_streamed_metrics_are_the_rendered_exposition(client: Client) -> None:
    """/metrics is streamed family by family; the bytes are those `Exposition.render` makes (the reference
    comparison is in test_exposition), in both formats, and HEAD answers the headers alone."""
    for vid in TOKENS:
        assert (await post(client, wire_snapshot(vid, errors={"E1": 1}), token=vid)).status == 200
    exposition = client.app[RUNTIME].exposition
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        resp = await client.get("/metrics", headers={"Accept": accept})
        body = await resp.read()
        expected, content_type = exposition.render(accept)
        assert resp.headers["Content-Type"] == content_type
        # The service families count this very request only after it is answered: compare the fleet part.
        fleet_part = expected.split(b"# HELP http_requests")[0]
        assert body.startswith(fleet_part) and b"# HELP http_requests" in body
    head = await client.head("/metrics")
    assert head.status == 200 and await head.read() == b""


async def test_the_vehicles_view_of_its_link_is_exported_and_summed_over_boots(client: Client) -> None:
    """Counters cumulative per boot (like errors), summed over boots; the last outage and RTT as last reported."""
    outage = {"started_at": 1_800_000_000.0, "ended_at": 1_800_000_090.0, "start_lat": 52.5, "start_lon": 13.4}
    first = {"failed_attempts_total": 9, "outages_total": 2, "outage_seconds_total": 120.0, "rtt_s": 0.05}
    await post(client, wire_snapshot("V1", boot_id="first", seq=5, link=first))
    second = {"failed_attempts_total": 3, "outages_total": 1, "outage_seconds_total": 90.0, "rtt_s": 0.25}
    await post(client, wire_snapshot("V1", boot_id="second", seq=1, link={**second, "last_outage": outage}))
    m = await metrics(client)
    assert sample(m, "vehicle_link_failed_pushes_total", vehicle_id="V1") == 12
    assert sample(m, "vehicle_link_outages_total", vehicle_id="V1") == 3
    assert sample(m, "vehicle_link_outage_seconds_total", vehicle_id="V1") == 210.0
    assert sample(m, "vehicle_link_rtt_seconds", vehicle_id="V1") == 0.25
    assert sample(m, "vehicle_link_last_outage_timestamp_seconds", vehicle_id="V1", edge="end") == 1_800_000_090.0
    assert sample(m, "vehicle_link_last_outage_latitude", vehicle_id="V1", edge="start") == 52.5
    assert sample(m, "vehicle_link_last_outage_longitude", vehicle_id="V1", edge="start") == 13.4
    assert sample(m, "vehicle_link_last_outage_latitude", vehicle_id="V1", edge="end") is None  # no fix at the end
    assert not any(name.startswith("vehicle_link_") and dict(labels).get("vehicle_id") == "V2" for name, labels in m)


async def test_metrics_past_the_pause_budget_are_written_whole(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape that outlived its pause budget (an overloaded aggregator) writes the rest in one piece: the same
    exposition."""
    from tvm_observability.aggregator import app as app_module

    monkeypatch.setattr(app_module, "METRICS_PAUSE_BUDGET_S", 0.0)
    assert (await post(client, wire_snapshot("V1", errors={"E1": 1}), token="V1")).status == 200
    body = await (await client.get("/metrics")).read()
    expected, _ = client.app[RUNTIME].exposition.render("")
    assert body.startswith(expected.split(b"# HELP http_requests")[0]) and body.endswith(b"\n")
    assert sample(parse_metrics(body.decode()), "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 1
