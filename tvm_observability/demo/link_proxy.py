"""A TCP proxy between a bridge and the aggregator that can misbehave like a real link (the tests' faults and the
demo's outage). It listens on loopback only, on a port of its own (port 0 resolved).

up: bytes flow both ways. slow: every answer from the aggregator is held `delay_s` before it is passed on
(a slow aggregator). hole: existing connections are dropped and new ones accepted but never forwarded or
answered (a radio link that died: packets vanish, the client only sees timeouts).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time


def _loopback(upstream: tuple[str, int]) -> tuple[str, int]:
    """`upstream` if its host is a loopback address (or `localhost`); ValueError otherwise."""
    host = upstream[0]
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the link proxy forwards to loopback only, not to {host}")
    return upstream


class LinkProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = _loopback(upstream)
        self.delay_s = 0.0
        self.mode = "up"
        self.connections = 0
        self.holding = 0
        """Answers held back right now (slow mode)."""
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="link-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_upstream(self, upstream: tuple[str, int]) -> None:
        self.upstream = _loopback(upstream)

    def cut(self) -> None:
        """Black hole from now on: drop every connection; accept new ones and let them hang."""
        self.mode = "hole"
        self._drop_all()

    def restore(self) -> None:
        """Back to a working link (held connections are dropped, as a recovering link would)."""
        self.mode = "up"
        self.delay_s = 0.0
        self._drop_all()

    def slow(self, delay_s: float) -> None:
        self.mode, self.delay_s = "up", delay_s

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._track(client)
            if self.mode == "hole":
                continue  # held open, never read, never answered
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._track(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if answers and self.delay_s:
                    with self._lock:
                        self.holding += 1
                    try:
                        time.sleep(self.delay_s)
                    finally:
                        with self._lock:
                            self.holding -= 1
                if self.mode == "hole":
                    break
                sink.sendall(chunk)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._server.close()
        self._drop_all()
