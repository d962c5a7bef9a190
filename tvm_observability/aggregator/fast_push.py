"""The push fast path: a plain push answered without aiohttp's per-request machinery.

A push is a few hundred bytes, and aiohttp's handling of one (request and stream objects, router, middleware
chain, response object, header encoding) costs more CPU than everything the aggregator then does with it
(docs/benchmarks.md). `FastPush` sits between the connection guard and aiohttp's request handler. It answers a
request itself only when it is exactly a plain push the aggregator takes:

- the request line `POST /api/v1/telemetry HTTP/1.1`; header lines of token names and visible-ASCII values, each
  name once, ending in CRLF (no obs-fold, no bare LF); a Host; a Content-Length of digits within the body limit; none of
  Transfer-Encoding, Content-Encoding, Expect or Upgrade; Connection absent, `keep-alive` or `close`; a
  Content-Type that is exactly an accepted one;
- and a push that is taken: credential, routing header, body, roster, rate limit and fleet all say yes.

It answers with the same steps as app.handle_telemetry (app.take_push, app.after_push, the same acknowledgement,
request metrics and X-Request-Id) and the same response headers as aiohttp. Everything else goes to aiohttp's
request handler, from the first byte of that request on, for the rest of the connection: other routes, every
refusal (aiohttp's path runs the same checks again, none of which changed anything, and answers, counts and logs
the refusal as always), and any request whose framing this parser might not read exactly as aiohttp's does.
Pipelined requests are answered in order: a request is answered before the next is read.

A push split across reads is waited for (up to `limits.max_body_bytes` plus MAX_HEAD_BYTES, the whole request
within `limits.body_timeout_s` of its first byte however slowly it drips in; then it goes to aiohttp, whose limits
and timeouts apply from there). An idle connection is closed
after `limits.idle_timeout_s`, as aiohttp closes its own. At shutdown `FastPushConnections.close_idle()` closes
the connections aiohttp does not know, before the state is saved: a push is answered in one step of the event
loop, so none is ever half done.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import cast

from aiohttp.http import SERVER_SOFTWARE

from ..auth import bearer_token
from ..errors import TelemetryError
from ..model import ROUTING_HEADER, TELEMETRY_PATH
from .app import (
    ACCEPTED_CONTENT_TYPES,
    ACK_CONTENT_TYPE,
    Runtime,
    acknowledgement,
    after_push,
    authenticate,
    request_id,
    routing_vehicle,
    take_push,
)
from .ingest import decode_snapshot

_LOGGER = logging.getLogger("tvm_observability.aggregator.fast_push")

MAX_HEAD_BYTES = 8190
"""The longest request head the fast path reads (aiohttp's own line limit); a longer one goes to aiohttp."""

_REQUEST_LINE = f"POST {TELEMETRY_PATH} HTTP/1.1".encode()
_HEAD_END = b"\r\n\r\n"
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?[ \t]*")
"""A header line as RFC 9110 has it (token name, colon, optional whitespace, visible ASCII), nothing looser."""
_DIGITS = re.compile(rb"[0-9]{1,10}")
_HANDED_OVER = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"})
"""Headers whose request aiohttp serves: framing or semantics the fast path does not take on."""
_ROUTING = ROUTING_HEADER.lower().encode()


class Push:
    """One complete plain push: its headers (lower-cased names) and body."""

    __slots__ = ("body", "close", "end", "headers")

    def __init__(self, headers: dict[bytes, bytes], body: bytes, end: int, close: bool) -> None:
        self.headers = headers
        self.body = body
        self.end = end
        """Offset just past the body in the buffer read."""
        self.close = close
        """The client asked to close the connection after the answer."""


INCOMPLETE = "incomplete"
NOT_PLAIN = "not plain"


def parse(buffer: bytes, max_body: int) -> Push | str:
    """The plain push at the start of `buffer`, INCOMPLETE while more of one may come, or NOT_PLAIN."""
    head_end = buffer.find(_HEAD_END, 0, MAX_HEAD_BYTES + len(_HEAD_END))
    if head_end < 0:
        if len(buffer) >= MAX_HEAD_BYTES + len(_HEAD_END) or not _REQUEST_LINE.startswith(buffer[: len(_REQUEST_LINE)]):
            return NOT_PLAIN
        return INCOMPLETE
    lines = buffer[:head_end].split(b"\r\n")
    if lines[0] != _REQUEST_LINE:
        return NOT_PLAIN
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None:
            return NOT_PLAIN  # obs-fold, bare LF or CR, space before the colon, control or non-ASCII bytes
        name = match.group(1).lower()
        if name in headers or name in _HANDED_OVER:
            return NOT_PLAIN
        headers[name] = match.group(2) or b""
    if b"host" not in headers:  # HTTP/1.1 requires it, and llhttp refuses a request without it
        return NOT_PLAIN
    length = headers.get(b"content-length")
    if length is None or _DIGITS.fullmatch(length) is None or int(length) > max_body:
        return NOT_PLAIN
    connection = headers.get(b"connection", b"keep-alive").lower()
    if connection not in (b"keep-alive", b"close"):
        return NOT_PLAIN
    start = head_end + len(_HEAD_END)
    end = start + int(length)
    if len(buffer) < end:
        return INCOMPLETE
    return Push(headers, buffer[start:end], end, connection == b"close")


class _Date:
    """The Date header's value, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value


_SERVER = SERVER_SOFTWARE.encode()
_CONTENT_TYPE = ACK_CONTENT_TYPE.encode()


def answer(rt: Runtime, push: Push) -> bytes | None:
    """The response to a plain push taken, or None for one refused (nothing changed: aiohttp serves it)."""
    started = time.perf_counter()
    headers = push.headers
    content_type = headers.get(b"content-type", b"").decode()
    if content_type not in ACCEPTED_CONTENT_TYPES:
        return None
    given_id = headers.get(b"x-request-id")
    rid = request_id(None if given_id is None else given_id.decode())
    authorization, routed = headers.get(b"authorization"), headers.get(_ROUTING)
    try:
        credential = authenticate(rt, bearer_token(None if authorization is None else authorization.decode()))
        routed_vehicle = routing_vehicle(None if routed is None else routed.decode(), credential)
        snap = decode_snapshot(push.body, rt.ingest_limits)
        outcome = take_push(rt, snap, push.body, credential, routed_vehicle)
    except TelemetryError:
        return None
    after_push(rt, snap, outcome, rid)
    body = acknowledgement(outcome, snap)
    response = b"".join(
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: ",
            _CONTENT_TYPE,
            b"\r\nX-Request-Id: ",
            rid.encode(),
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nDate: ",
            _Date.now(),
            b"\r\nServer: ",
            _SERVER,
            b"\r\nConnection: close\r\n\r\n" if push.close else b"\r\n\r\n",
            body,
        )
    )
    rt.metrics.observe_request("POST", TELEMETRY_PATH, 200, time.perf_counter() - started)
    return response


class FastPushConnections:
    """The protocol factory the connection guard hands each connection to (in place of aiohttp's), and the
    connections it serves."""

    def __init__(self, runtime: Runtime, aiohttp_handlers: Callable[[], asyncio.Protocol]) -> None:
        self.runtime = runtime
        self.aiohttp_handlers = aiohttp_handlers
        self.open: set[FastPush] = set()
        self.serving = True

    def __call__(self) -> FastPush:
        return FastPush(self)

    def close_idle(self) -> None:
        """Shutdown: stop answering, close the connections that are still ours (aiohttp closes its own)."""
        self.serving = False
        for connection in list(self.open):
            connection.close()


class FastPush(asyncio.Protocol):
    """One connection: plain pushes answered here until the first request that is not one, then aiohttp's."""

    def __init__(self, connections: FastPushConnections) -> None:
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.handler: asyncio.Protocol | None = None
        self._buffer = b""
        self._last_read = 0.0
        self._started = 0.0
        """When the request waiting in the buffer began to arrive."""
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not derive from it
        self.connections.open.add(self)
        self._last_read = asyncio.get_running_loop().time()
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)
            return
        transport = self.transport
        assert transport is not None
        self._last_read = asyncio.get_running_loop().time()
        buffer = self._buffer + data if self._buffer else data
        connections = self.connections
        rt = connections.runtime
        while buffer:
            if not connections.serving:
                self._hand_over(buffer)
                return
            push = parse(buffer, rt.config.limits.max_body_bytes)
            if push is INCOMPLETE:
                if not self._buffer:  # the whole request within the body timeout from its first byte, however
                    self._buffer = buffer  # slowly it drips in; then aiohttp's timeouts apply
                    self._started = self._last_read
                    self._disarm()
                    self._arm()
                self._buffer = buffer
                return
            if push is NOT_PLAIN:
                self._hand_over(buffer)
                return
            assert isinstance(push, Push)
            try:
                response = answer(rt, push)
            except Exception:  # a defect: logged, and the request is aiohttp's, which answers it or says 500
                _LOGGER.exception("push fast path failed; the request goes to aiohttp")
                response = None
            if response is None:
                self._hand_over(buffer)
                return
            transport.write(response)
            self._buffer = b""  # answered: what follows is a new request, with a timeout of its own
            if push.close:
                self.close()
                return
            buffer = buffer[push.end :]
        self._buffer = b""

    def _hand_over(self, buffer: bytes) -> None:
        """aiohttp's request handler takes the connection from this request on."""
        transport = self.transport
        assert transport is not None
        self._buffer = b""
        self._disarm()
        self.connections.open.discard(self)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self.handler = handler = self.connections.aiohttp_handlers()
        handler.connection_made(transport)
        if buffer:
            handler.data_received(buffer)

    # -- timing: an idle connection closes, a stalled push goes to aiohttp ---------------------------

    def _arm(self) -> None:
        limits = self.connections.runtime.config.limits
        pending = self._buffer  # a request under way has the body timeout from its start; none, the idle one
        deadline = self._started + limits.body_timeout_s if pending else self._last_read + limits.idle_timeout_s
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.handler is not None or self.transport is None:
            return
        limits = self.connections.runtime.config.limits
        now = asyncio.get_running_loop().time()
        if self._buffer and now - self._started >= limits.body_timeout_s:
            self._hand_over(self._buffer)  # aiohttp's timeouts and limits take it from here
        elif not self._buffer and now - self._last_read >= limits.idle_timeout_s:
            self.close()
        else:
            self._arm()

    # -- the rest of the protocol --------------------------------------------------------------------

    def close(self) -> None:
        self._disarm()
        self.connections.open.discard(self)
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self.handler is not None:
            return self.handler.eof_received()
        return None  # the transport closes; a partial push is dropped with it, never answered

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.connections.open.discard(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)
        self.transport = None

    def pause_writing(self) -> None:
        """A client that does not read its answers: stop reading its requests until it does."""
        if self.handler is not None:
            self.handler.pause_writing()
        elif self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()
        elif self.transport is not None and self._paused:
            self._paused = False
            self.transport.resume_reading()
