"""Idle connections against a running aggregator's TLS port: what they cost it in memory (issue 10 item 2).

Opens N connections from distinct loopback addresses (50 per address), each sending a real TLS ClientHello
and then nothing (the server holds a half-done handshake), or nothing at all (`--silent`); holds them for
`--hold` seconds; closes them and waits `--settle` seconds. Prints the aggregator's RSS (VmRSS) before,
while held (its peak, VmHWM) and after, and how many connections the server had reset while held.
Loopback only; bounded in count and time.

    python bench/idle_connections.py --port 9443 --pid 12345 --connections 3000
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import ssl
import time
from pathlib import Path


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def client_hello() -> bytes:
    """The bytes of a TLS ClientHello, from a client that will never answer the server."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the aggregator's process id (for its RSS)")
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--silent", action="store_true", help="send nothing, not even a ClientHello")
    options = parser.parse_args()
    if options.connections > 20_000 or options.hold > 120:
        parser.error("bounded: at most 20,000 connections held at most 120 s")

    hello = b"" if options.silent else client_hello()
    before = memory_kib(options.pid)
    started = time.monotonic()
    socks: list[socket.socket] = []
    failed = 0
    for i in range(options.connections):
        address = i // 50  # 50 connections per source address
        source = f"127.{20 + address // 250}.{address % 250}.1"
        try:
            sock = socket.create_connection(("127.0.0.1", options.port), 10, source_address=(source, 0))
            if hello:
                sock.sendall(hello)
            socks.append(sock)
        except OSError:
            failed += 1
    connect_s = time.monotonic() - started
    time.sleep(options.hold)
    held = memory_kib(options.pid)
    reset = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            reset += sock.recv(65536, socket.MSG_PEEK) == b""
        except BlockingIOError:
            pass  # open, nothing to read
        except OSError:
            reset += 1
    for sock in socks:
        sock.close()
    time.sleep(options.settle)
    after = memory_kib(options.pid)
    print(
        f"{options.connections} idle {'silent' if options.silent else 'ClientHello'} connections "
        f"(opened in {connect_s:.1f} s, {failed} not connected, {reset} closed by the server while held): "
        f"RSS before {before['VmRSS'] / 1024:.1f} MiB, peak {held['VmHWM'] / 1024:.1f} MiB, "
        f"held {held['VmRSS'] / 1024:.1f} MiB, {options.settle:g} s after closing {after['VmRSS'] / 1024:.1f} MiB"
    )


if __name__ == "__main__":
    main()
