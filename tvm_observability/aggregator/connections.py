"""Connection admission: what an unauthenticated client can hold open, and the real client address.

aiohttp's site has no connection cap and no handshake timeout of its own: idle TCP connections need no
credential, and on the TLS port each held 45-300 KiB until asyncio's 60 s default handshake timeout. Here the
listening socket is plain TCP and every accepted connection passes `ConnectionGuard` first:

- a total cap (`limits.max_connections`, kept below the file descriptor limit, so accept() never runs out of
  descriptors), and a cap on *pending* connections, those that have not yet sent the complete headers of a
  first request (`limits.max_pending_connections`, and per client address
  `limits.max_pending_connections_per_source`, which trusted proxies are exempt from);
- TLS is started by the guard, after admission, with `limits.tls_handshake_timeout_s`;
- the first request's headers must be complete within `limits.header_timeout_s` of the accept.

At the pending caps the oldest pending connection is cut to make room (idle connections cannot lock out health
checks, scrapes and pushes); a connection refused outright (its address holds too many pending ones, or every
connection is busy with requests) is reset at once: it costs an accept and a close, no TLS state and no
buffers. What is refused or cut is counted (`telemetry_connections_refused_total{reason}`) and logged at a
bounded rate.

Accepting is `Acceptor`'s: on each turn of the event loop it takes every connection the kernel has queued, as
far as the pending cap and the descriptors allow (asyncio's own accept loop takes its `backlog` argument's worth,
16 here, per turn: under overload a turn lasts as long as the requests it serves, and a reconnecting fleet then
waited in the kernel's queue, unanswered and uncounted, while the connections already open were served again
and again; docs/reliability.md).

`client_address` gives the address per-source limits and logs use: the peer, or, when the peer is a trusted
proxy (`trusted_proxies`), the client it names in `X-Forwarded-For`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from aiohttp import web

from .config import AggregatorConfig
from .logs import LogSummary

_LOGGER = logging.getLogger("tvm_observability.aggregator.connections")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSAL_REASONS: tuple[str, ...] = (
    "max_connections",
    "max_pending",
    "max_pending_per_source",
    "tls_handshake",
    "header_timeout",
)
"""Why a connection was refused or cut before its first request (the `reason` label)."""

FORWARDED_FOR = "X-Forwarded-For"

FD_RESERVE = 256
"""File descriptors kept free of client connections: listening sockets, the state file, logs, a margin."""


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """The connection limits in force (from the config: a reload changes them for new connections)."""

    max_connections: int
    max_pending: int
    max_pending_per_source: int
    tls_handshake_timeout_s: float
    header_timeout_s: float
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def of(cls, config: AggregatorConfig) -> ConnectionPolicy:
        limits = config.limits
        return cls(
            max_connections=limits.max_connections,
            max_pending=limits.max_pending_connections,
            max_pending_per_source=limits.max_pending_connections_per_source,
            tls_handshake_timeout_s=limits.tls_handshake_timeout_s,
            header_timeout_s=limits.header_timeout_s,
            trusted_proxies=config.trusted_proxies,
        )


def is_trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    if not address or not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy; then the right-most address of
    `X-Forwarded-For` (all its header lines, in order) that is not itself a trusted proxy. Entries left of it
    were written by the client and are never believed. An entry that is not an address ends the walk at the
    last trusted hop."""
    if not is_trusted(peer, trusted):
        return peer or "unknown"
    hop = peer or "unknown"
    entries = [e.strip() for line in forwarded_for for e in line.split(",")]
    for entry in reversed(entries):
        try:
            address = str(ipaddress.ip_address(entry.strip("[]")))
        except ValueError:
            return hop
        if not is_trusted(address, trusted):
            return address
        hop = address
    return hop


def request_client(request: web.BaseRequest, trusted: Sequence[Network]) -> str:
    """`client_address` of a request: its peer and its X-Forwarded-For lines."""
    return client_address(request.remote, request.headers.getall(FORWARDED_FOR, []), trusted)


def descriptor_budget() -> int:
    """Client connections the process can hold: raises the soft RLIMIT_NOFILE to the hard limit, keeps
    FD_RESERVE free."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, soft - FD_RESERVE)


class ConnectionGuard:
    """The protocol factory of the listening socket: admits, times and counts connections; each admitted one
    is handed to `handler_factory()` (aiohttp's request handler), over TLS when `ssl_context` is set."""

    def __init__(
        self,
        handler_factory: Callable[[], asyncio.Protocol],
        policy: Callable[[], ConnectionPolicy],
        *,
        ssl_context: ssl.SSLContext | None,
        descriptor_budget: int,
        refused: Callable[[str], None],
    ) -> None:
        self.handler_factory = handler_factory
        self.policy = policy
        self.ssl_context = ssl_context
        """The server context; swapping it applies to new connections."""
        self.descriptor_budget = descriptor_budget
        self._refused = refused
        self.open = 0
        self.pending = 0
        self._pending_by_source: dict[str, int] = {}
        self._pending: dict[GuardedConnection, None] = {}
        """Pending connections, oldest first."""
        self.log = LogSummary(_LOGGER, "connection refused")

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self)

    def max_connections(self, policy: ConnectionPolicy) -> int:
        return min(policy.max_connections, self.descriptor_budget)

    def refuse(self, reason: str, source: str) -> None:
        self._refused(reason)
        if self.log.admit(reason, source):
            _LOGGER.warning("connection refused: %s", reason, extra={"reason": reason, "remote": source})

    def admit(self, connection: GuardedConnection, source: str, policy: ConnectionPolicy) -> str | None:
        """Count the connection in, or say why not.

        At a cap that pending connections fill, the oldest pending connection makes room (it had the longest
        to send its headers, and a real client sends them within milliseconds), so that a crowd of idle
        connections cannot lock out health checks, scrapes and pushes; a new connection is refused only when
        its own address holds too many pending ones, or when every connection is busy with requests."""
        per_source = self._pending_by_source.get(source, 0)
        if per_source >= policy.max_pending_per_source and not is_trusted(source, policy.trusted_proxies):
            return "max_pending_per_source"
        if self.open >= self.max_connections(policy) and not self._evict_oldest_pending("max_connections"):
            return "max_connections"
        if self.pending >= policy.max_pending:
            self._evict_oldest_pending("max_pending")
        self.open += 1
        self.pending += 1
        self._pending_by_source[source] = self._pending_by_source.get(source, 0) + 1
        self._pending[connection] = None
        return None

    def _evict_oldest_pending(self, reason: str) -> bool:
        oldest = next(iter(self._pending), None)
        if oldest is None:
            return False
        self.refuse(reason, oldest.source)
        oldest.abort()
        return True

    def first_request(self, connection: GuardedConnection) -> None:
        """The connection sent a first request's headers (or closed before): no longer pending."""
        del self._pending[connection]
        self.pending -= 1
        left = self._pending_by_source[connection.source] - 1
        if left:
            self._pending_by_source[connection.source] = left
        else:
            del self._pending_by_source[connection.source]

    def closed(self) -> None:
        self.open -= 1

    def abort_pending(self) -> None:
        """At shutdown: drop every connection still in its handshake or first headers."""
        for connection in list(self._pending):
            connection.abort()


_HEAD_END = b"\r\n\r\n"


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: admission, TLS, the first-request deadline, then everything forwarded to the
    request handler."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.handler: asyncio.Protocol | None = None
        self.source = "unknown"
        self.is_pending = False
        self._admitted = False
        self._tail = b""
        self._deadline: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []

    # -- admission ---------------------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it: no isinstance check here.
        self.transport = transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        guard = self.guard
        policy = guard.policy()
        refusal = guard.admit(self, self.source, policy)
        if refusal is not None:
            guard.refuse(refusal, self.source)
            transport.abort()
            return
        self._admitted = True
        self.is_pending = True
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(policy.header_timeout_s, self._header_deadline)
        if guard.ssl_context is None:
            self._connect_handler(transport)
        else:
            # start_tls() pauses reading and takes the transport over in this task's first step, which the loop
            # runs before any read callback of this new transport.
            handshake = self._start_tls(transport, guard.ssl_context, policy.tls_handshake_timeout_s)
            self._handshake = loop.create_task(handshake)

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext, timeout_s: float) -> None:
        if not self.is_pending:
            return  # cut before its turn came (an accept storm evicts the oldest): no TLS state was ever made
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(transport, self, context, server_side=True, ssl_handshake_timeout=timeout_s)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError):
            secure = None
        if secure is None or secure.is_closing():
            if self.is_pending and self.transport is transport:
                self.guard.refuse("tls_handshake", self.source)
                self._forget()
            transport.abort()
            return
        self.transport = secure
        self._connect_handler(secure)

    def _connect_handler(self, transport: asyncio.Transport) -> None:
        self.handler = self.guard.handler_factory()
        self.handler.connection_made(transport)
        if self._early:  # decrypted before start_tls() returned to us
            early, self._early = b"".join(self._early), []
            self.handler.data_received(early)

    def _header_deadline(self) -> None:
        self._deadline = None
        if self.is_pending:
            self.guard.refuse("header_timeout", self.source)
            self.abort()

    def _no_longer_pending(self) -> None:
        if self.is_pending:
            self.is_pending = False
            self.guard.first_request(self)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    def _forget(self) -> None:
        """Out of every count (closed, whatever the way)."""
        if not self._admitted:
            return
        self._admitted = False
        self._no_longer_pending()
        self.guard.closed()

    def abort(self) -> None:
        transport = self.transport
        self._forget()
        if transport is not None:
            transport.abort()

    # -- forwarding ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.is_pending:
            seen = self._tail + data
            if _HEAD_END in seen:
                self._no_longer_pending()
            else:
                self._tail = seen[-3:]
        if self.handler is not None:
            self.handler.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.handler is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


LISTEN_BACKLOG = 4096
"""The kernel's queue of connections not yet accepted: a whole fleet reconnecting at once (after an outage or a
restart) overflows the default of 128."""
ACCEPT_FLOOR = 16
"""Connections accepted per turn of the event loop even when the caps leave no room: past a cap they are refused
with a counted reason (or make an idle pending one give way), never left in the kernel's queue unanswered."""
ACCEPT_RETRY_S = 1.0
"""Accepting pauses this long when the process is out of descriptors or memory (asyncio's own delay)."""
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
OUT_OF_RESOURCES_MESSAGE = "socket.accept() out of system resource"
"""asyncio's words for it, kept so that the log (bounded by the service's loop exception handler) reads the
same."""


def listening_sockets(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of `host`, as asyncio's create_server makes
    them (SO_REUSEADDR; IPv6 sockets IPv6 only)."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                message = f"error while attempting to bind on address {address!r}: {exc.strerror}"
                raise OSError(exc.errno, message) from exc
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """Accepts the connections queued on `sockets` and hands each to `guard`, on the running loop (asyncio's or
    uvloop's).

    Each turn takes every queued connection, up to what the caps leave room for: the pending cap (a batch larger
    than it would make the batch's own oldest connections give way before their requests, already in their
    socket buffers, were read) and the descriptors; at least ACCEPT_FLOOR, so that past a cap new connections are
    refused with a counted reason rather than left waiting. Out of descriptors, accepting pauses ACCEPT_RETRY_S
    with one report, where asyncio's loop went on and reported every try."""

    def __init__(self, guard: ConnectionGuard, sockets: Sequence[socket.socket]) -> None:
        self.guard = guard
        self.sockets = list(sockets)
        self.loop = asyncio.get_running_loop()
        self.handing_over = 0
        """Accepted, not yet in the guard's counts (the transport is being made)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries: dict[int, asyncio.TimerHandle] = {}
        """Per listening descriptor: when accepting resumes after running out of resources."""
        self._closed = False

    def start(self) -> None:
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close the listening sockets (connections already accepted go on)."""
        self._closed = True
        for retry in self._retries.values():
            retry.cancel()
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def room(self) -> int:
        """Connections this turn may accept."""
        guard = self.guard
        policy = guard.policy()
        pending = policy.max_pending - guard.pending - self.handing_over
        descriptors = guard.descriptor_budget - guard.open - self.handing_over
        return min(LISTEN_BACKLOG, max(ACCEPT_FLOOR, min(pending, descriptors)))

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self.room()):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # the queue is empty
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise  # the loop's exception handler logs it
                self._pause(sock, exc)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):  # as asyncio's transports do: small answers leave at once
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.handing_over += 1
            task = self.loop.create_task(self._hand_over(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.guard, conn)
        except (OSError, RuntimeError):
            conn.close()  # reset before its transport was made, or the loop is closing
        finally:
            self.handing_over -= 1

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        self.loop.call_exception_handler(
            {
                "message": OUT_OF_RESOURCES_MESSAGE,
                "exception": exc,
                "socket": sock,
            }
        )
        self.loop.remove_reader(sock.fileno())
        self._retries[sock.fileno()] = self.loop.call_later(ACCEPT_RETRY_S, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        del self._retries[sock.fileno()]
        if not self._closed:
            self.loop.add_reader(sock.fileno(), self._accept, sock)
