"""The push fast path (aggregator/fast_push.py): its parser reads a request exactly as aiohttp's (llhttp) does or
leaves it to aiohttp, and a real aggregator process answers through it what aiohttp would, byte for byte but the
date, with pipelining, split pushes, refusals, stalls, idle connections and shutdown handled as aiohttp handles
them."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import AggregatorProcess, raw_push, sample, scrape, wait_for

from tvm_observability import codec
from tvm_observability.aggregator.fast_push import INCOMPLETE, MAX_HEAD_BYTES, NOT_PLAIN, Push, parse
from tvm_observability.model import TELEMETRY_PATH

MAX_BODY = 65_536


# -- the parser ------------------------------------------------------------------------------------------


def test_a_plain_push_is_read_with_its_headers_and_body_and_pipelined_ones_one_by_one() -> None:
    first, second = raw_push(seq=1), raw_push(seq=2, headers=[("Connection", "close")])
    push = parse(first + second, MAX_BODY)
    assert isinstance(push, Push) and push.end == len(first) and not push.close
    assert push.headers[b"content-type"] == b"application/msgpack" and push.headers[b"authorization"] == b"Bearer t"
    assert codec.decode(push.body)["seq"] == 1
    following = parse((first + second)[push.end :], MAX_BODY)
    assert isinstance(following, Push) and following.close and codec.decode(following.body)["seq"] == 2


def test_every_prefix_of_a_push_waits_for_the_rest() -> None:
    request = raw_push()
    assert all(parse(request[:cut], MAX_BODY) == INCOMPLETE for cut in range(1, len(request)))


@pytest.mark.parametrize(
    "request_bytes",
    [
        raw_push().replace(b"POST ", b"GET ", 1),
        raw_push().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        raw_push().replace(TELEMETRY_PATH.encode(), TELEMETRY_PATH.encode() + b"?x=1", 1),
        raw_push().replace(b"POST /", b"POST http://127.0.0.1/", 1),
        raw_push().replace(b"POST ", b"post ", 1),
        raw_push(headers=[("Transfer-Encoding", "chunked")]),
        raw_push(headers=[("Content-Length", "5")]),  # a second Content-Length
        raw_push(headers=[("Content-Encoding", "gzip")]),
        raw_push(headers=[("Expect", "100-continue")]),
        raw_push(headers=[("Upgrade", "h2c")]),
        raw_push(headers=[("Connection", "upgrade")]),
        raw_push(headers=[("X-Folded", "a\r\n b")]),  # obs-fold
        raw_push(headers=[("X-Bare", "a\nX-Smuggled: b")]),  # a bare LF
        raw_push(headers=[("X-Cr", "a\rb")]),
        raw_push(headers=[("X-Space ", "a")]),  # whitespace before the colon
        raw_push(headers=[("X-Latin", "caf\u00e9")]),
        raw_push(headers=[("X-Nul", "a\x00b")]),
        raw_push().replace(b"Content-Length: ", b"Content-Length: +", 1),
        raw_push().replace(b"\r\nContent-Length", b"\r\nX-Was-Length", 1),  # no Content-Length
        raw_push().replace(b"\r\nHost:", b"\r\nX-Was-Host:", 1),  # no Host
        raw_push().replace(b"Content-Length: ", b"Content-Length: 99999999", 1),  # over the limit
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n",  # not a push, and not complete yet: aiohttp's at once
        b"POST " + TELEMETRY_PATH.encode() + b" HTTP/1.1\r\nX-Long: " + b"a" * MAX_HEAD_BYTES,
    ],
)
def test_anything_but_a_plain_push_is_left_to_aiohttp(request_bytes: bytes) -> None:
    assert parse(request_bytes, MAX_BODY) == NOT_PLAIN


class _Parsed:
    """aiohttp's own parser (llhttp, as the server uses it) over the same bytes."""

    def __init__(self, data: bytes) -> None:
        loop = asyncio.new_event_loop()
        try:
            protocol = BaseProtocol(loop)
            parser = HttpRequestParser(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
            try:
                messages, _upgraded, _tail = parser.feed_data(data)
            except Exception as exc:  # any refusal by llhttp: the fast path must then have said NOT_PLAIN
                self.error: Exception | None = exc
                self.messages: list[Any] = []
                return
            self.error = None
            self.messages = []
            for message, payload in messages:
                complete = payload.is_eof()  # before reading: all of the body arrived and the message ended
                self.messages.append((message, payload.read_nowait(), complete))
        finally:
            loop.close()


HOSTILE_HEADERS = st.sampled_from(
    [
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "0"),
        ("content-length", "3"),
        ("Connection", "close"),
        ("Connection", "keep-alive"),
        ("X-Request-Id", "req-1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Empty", ""),
        ("X-Tabs", "\ta\tb\t"),
        ("X-Fold", "a\r\n\tb"),
        ("X-Lf", "a\nb"),
        ("X-Quote", '"\\"'),
        ("Host", "other"),
        ("Host", ""),
        ("X-Del", "a\x7fb"),
        ("X-At@", "a"),
        ("Content-Type", "application/msgpack"),
    ]
)
LENGTH_FORMS = st.sampled_from(["{}", "0{}", "00{}", " {} ", "{}\t", "+{}", "{}.0", "{},{}", "{} {}", "0x{}"])


@given(
    extra=st.lists(HOSTILE_HEADERS, max_size=3),
    noise=st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=3)), max_size=2),
    cut=st.integers(0, 40),
    length_form=LENGTH_FORMS,
)
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_request_the_fast_path_reads_is_the_request_aiohttp_reads(
    extra: list[tuple[str, str]], noise: list[tuple[int, bytes]], cut: int, length_form: str
) -> None:
    """Valid, mutated and hostile bytes (smuggling shapes among them): whenever the fast path takes a push,
    llhttp parses the same method, target, version, headers and body from those bytes, as one complete message
    with nothing left over (so it ends where the fast path ends it); then the same for the next request."""
    first = raw_push(headers=extra)
    length = first.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0].decode()
    first = first.replace(
        f"Content-Length: {length}\r\n".encode(),
        f"Content-Length: {length_form.format(length, length)}\r\n".encode(),
        1,
    )
    data = bytearray(first + raw_push(seq=2))
    for position, junk in noise:
        data[position:position] = junk
    rest = bytes(data[: len(data) - cut]) if cut else bytes(data)
    taken = 0
    while isinstance(push := parse(rest, MAX_BODY), Push):
        taken += 1
        parsed = _Parsed(rest[: push.end])
        assert parsed.error is None and len(parsed.messages) == 1, parsed.error
        message, body, complete = parsed.messages[0]
        assert (message.method, message.path, message.version) == ("POST", TELEMETRY_PATH, (1, 1))
        assert complete and body == push.body
        theirs = {name.lower().encode(): value.encode() for name, value in message.headers.items()}
        assert theirs == push.headers and len(message.headers) == len(push.headers)
        assert message.should_close == push.close
        rest = rest[push.end :]
    event(f"pushes taken by the fast path: {taken}")


# -- a real aggregator -----------------------------------------------------------------------------------


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), 10)


def read_responses(sock: socket.socket, count: int, timeout: float = 10.0) -> list[tuple[bytes, dict[str, str], bytes]]:
    """`count` HTTP/1.1 responses with a Content-Length from the socket: status line, headers, body."""
    sock.settimeout(timeout)
    buffer, out = b"", []
    while len(out) < count:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            status, *lines = buffer[:head_end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name] = value.strip()
            length = int(headers["Content-Length"])
            end = head_end + 4 + length
            if len(buffer) >= end:
                out.append((status.encode(), headers, buffer[head_end + 4 : end]))
                buffer = buffer[end:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {count} responses")
        buffer += chunk
    return out


def chunked(request: bytes) -> bytes:
    """The same push with its body in one chunk: a request the fast path leaves to aiohttp."""
    head, _, body = request.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")]
    return (
        b"\r\n".join([*lines, b"Transfer-Encoding: chunked"])
        + b"\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n"
        % (
            len(body),
            body,
        )
    )


@pytest.fixture
def aggregator(write_config: Any, fleet_tokens: dict[str, str]) -> Any:
    config = write_config(fleet_tokens, limits={"idle_timeout_s": 3.0, "body_timeout_s": 1.0})
    with AggregatorProcess(config) as agg:
        yield agg, fleet_tokens


def test_the_fast_answer_is_aiohttps_answer(aggregator: Any) -> None:
    agg, tokens = aggregator
    given = [("X-Request-Id", "req-7")]
    with connect(agg.url) as sock:
        sock.sendall(raw_push("V1", tokens["V1"], 1, headers=given))
        [(fast_status, fast_headers, fast_body)] = read_responses(sock, 1)
        sock.sendall(chunked(raw_push("V1", tokens["V1"], 2, headers=given)))
        [(slow_status, slow_headers, slow_body)] = read_responses(sock, 1)
    assert fast_status == slow_status == b"HTTP/1.1 200 OK"
    assert (
        list(fast_headers) == list(slow_headers) == ["Content-Type", "X-Request-Id", "Content-Length", "Date", "Server"]
    )
    assert {k: v for k, v in fast_headers.items() if k != "Date"} == {
        k: v for k, v in slow_headers.items() if k != "Date"
    }
    assert fast_body == slow_body.replace(b'"seq": 2', b'"seq": 1')
    samples = scrape(agg.url)
    assert sample(samples, "http_requests_total", method="POST", endpoint=TELEMETRY_PATH, status="200") == 2
    assert sample(samples, "http_request_duration_seconds_count", endpoint=TELEMETRY_PATH) == 2
    assert sample(samples, "telemetry_snapshots_received_total") == 2


def test_pipelined_pushes_then_another_route_are_answered_in_order(aggregator: Any) -> None:
    agg, tokens = aggregator
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(agg.url) as sock:
        sock.sendall(
            raw_push("V1", tokens["V1"], 1)
            + raw_push("V2", tokens["V2"], 1)
            + health
            + raw_push("V1", tokens["V1"], 2)  # after the hand-over: aiohttp's
        )
        answers = read_responses(sock, 4)
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert b'"vehicle_id": "V2"' in answers[1][2] and b'"seq": 2' in answers[3][2]
    assert answers[2][2] == b'{"alive": true}'


def test_a_push_split_across_reads_is_answered_once(aggregator: Any) -> None:
    agg, tokens = aggregator
    request = raw_push("V3", tokens["V3"], 1)
    with connect(agg.url) as sock:
        for piece in (request[:10], request[10:200], request[200:]):
            sock.sendall(piece)
            time.sleep(0.1)
        [(status, _, body)] = read_responses(sock, 1)
    assert status == b"HTTP/1.1 200 OK" and b'"status": "accepted"' in body


def test_a_refused_push_gets_aiohttps_refusal_counted_once(aggregator: Any) -> None:
    agg, tokens = aggregator
    before = scrape(agg.url)
    with connect(agg.url) as sock:
        sock.sendall(raw_push("V1", "not-a-valid-token-at-all", 1) + raw_push("V1", tokens["V1"], 5))
        (status, headers, body), (after_status, _, _) = read_responses(sock, 2)
    assert status == b"HTTP/1.1 401 Unauthorized" and headers["WWW-Authenticate"].startswith("Bearer")
    assert b'"error": "unauthenticated"' in body and after_status == b"HTTP/1.1 200 OK"
    after = scrape(agg.url)
    rejected = sample(after, "telemetry_snapshots_rejected_total", reason="unauthenticated") or 0.0
    assert rejected - (sample(before, "telemetry_snapshots_rejected_total", reason="unauthenticated") or 0.0) == 1


def test_a_stalled_push_gets_aiohttps_timeout_and_an_idle_connection_is_closed(aggregator: Any) -> None:
    agg, tokens = aggregator
    request = raw_push("V1", tokens["V1"], 9)
    with connect(agg.url) as stalled:
        stalled.sendall(request[:-10])  # the body never completes
        [(status, _, body)] = read_responses(stalled, 1, timeout=15)
    assert status.startswith(b"HTTP/1.1 408") and b"body_timeout" in body
    with connect(agg.url) as idle:
        idle.sendall(raw_push("V1", tokens["V1"], 10))
        read_responses(idle, 1)
        started = time.monotonic()
        idle.settimeout(15)
        assert idle.recv(1) == b""  # closed by the aggregator after limits.idle_timeout_s
        assert time.monotonic() - started >= 2.0


def test_connection_close_is_honoured(aggregator: Any) -> None:
    agg, tokens = aggregator
    with connect(agg.url) as sock:
        sock.sendall(raw_push("V2", tokens["V2"], 3, headers=[("Connection", "close")]))
        [(status, headers, _)] = read_responses(sock, 1)
        sock.settimeout(10)
        assert sock.recv(1) == b""
    assert status == b"HTTP/1.1 200 OK" and headers["Connection"] == "close"


def test_shutdown_closes_fast_connections_and_saves_what_they_pushed(
    write_config: Any, fleet_tokens: dict[str, str], tmp_path: Path
) -> None:
    config = write_config(fleet_tokens, state_file=str(tmp_path / "state.json"))
    with AggregatorProcess(config) as agg:
        sock = connect(agg.url)
        sock.sendall(raw_push("V1", fleet_tokens["V1"], 41))
        read_responses(sock, 1)
        assert agg.stop() == 0  # the open keep-alive connection does not hold the shutdown up
        sock.settimeout(10)
        assert sock.recv(1) == b""
        sock.close()
    with AggregatorProcess(config) as again:
        with connect(again.url) as sock:
            sock.sendall(raw_push("V1", fleet_tokens["V1"], 41))  # the same seq: known, so a duplicate
            [(_, _, body)] = read_responses(sock, 1)
        assert b'"status": "duplicate"' in body
        wait_for(lambda: sample(scrape(again.url), "telemetry_snapshots_duplicate_total") == 1, 10, what="counted")
