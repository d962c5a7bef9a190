"""Connection admission (issue 10 item 2) against a real aggregator process on loopback: idle connections
cannot pile up, a crowd of them cannot lock out a real client, TLS handshakes and first headers have
deadlines, refusals are counted and logged at a bounded rate, and a trusted proxy names the client.

Connections come from distinct loopback addresses (127.0.0.0/8 is all this machine's) where the per-address
limit is not the subject."""

from __future__ import annotations

import contextlib
import ipaddress
import resource
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support import AggregatorProcess, push, sample, scrape, wait_for, wire_snapshot
from tls_certs import ThrowawayCA

from tvm_observability import codec
from tvm_observability.aggregator.connections import client_address
from tvm_observability.auth import generate_token, hash_token

TRUSTED = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.5/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # not a trusted peer: its header is not believed
        ("10.1.1.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.1.1", ["1.2.3.4, 198.51.100.1"], "198.51.100.1"),  # the client wrote 1.2.3.4 itself
        ("10.1.1.1", ["198.51.100.1, 10.2.2.2"], "198.51.100.1"),  # two proxies
        ("10.1.1.1", ["198.51.100.1", "10.2.2.2"], "198.51.100.1"),  # in two header lines
        ("10.1.1.1", ["[2001:db8::1]"], "2001:db8::1"),
        ("10.1.1.1", ["not-an-address, 10.2.2.2"], "10.2.2.2"),  # the walk stops at the last trusted hop
        ("10.1.1.1", [], "10.1.1.1"),
        (None, ["198.51.100.1"], "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded: list[str], client: str) -> None:
    assert client_address(peer, forwarded, TRUSTED) == client


def write_config(tmp_path: Path, **overrides: Any) -> tuple[Path, str]:
    token = generate_token()
    limits = {
        "max_connections": 40,
        "max_pending_connections": 12,
        "max_pending_connections_per_source": 4,
        "header_timeout_s": 600,  # the tests that are not about it must not race it
        "rate_limit_per_vehicle_hz": 1000,
        "rate_limit_burst": 1000,
    }
    limits.update(overrides.pop("limits", {}))
    config = {
        "listen": "127.0.0.1:0",
        "environment": "test",
        "vehicles": {"V1": {"token_sha256": hash_token(token)}},
        "limits": limits,
        **overrides,
    }
    path = tmp_path / "aggregator.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, token


@contextlib.contextmanager
def idle_connections(url: str, sources: list[str]) -> Iterator[list[socket.socket]]:
    """One connection from each loopback address in `sources` (repeat one for several), sending nothing."""
    parts = urlsplit(url)
    socks = [socket.create_connection((parts.hostname, parts.port), 10, source_address=(s, 0)) for s in sources]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def is_reset(sock: socket.socket, timeout: float = 30.0) -> bool:
    """Whether the server closed this connection (within `timeout`) without a word."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def refused(url: str) -> dict[str, float]:
    samples = scrape(url)
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "telemetry_connections_refused_total"
    }


def gauges(url: str) -> tuple[float | None, float | None]:
    """(open, pending) connections, the scrape's own connection included in open (not in pending: its headers
    are complete when the scrape is answered)."""
    samples = scrape(url)
    return sample(samples, "telemetry_connections_open"), sample(samples, "telemetry_connections_pending")


def test_per_source_pending_cap_refuses_only_that_source(tmp_path: Path) -> None:
    path, token = write_config(tmp_path)
    with AggregatorProcess(path) as agg:
        with idle_connections(agg.url, ["127.0.0.2"] * 4) as held:
            wait_for(lambda: gauges(agg.url)[1] == 4, 20, what="4 pending connections")
            with idle_connections(agg.url, ["127.0.0.2"]) as (fifth,):
                assert is_reset(fifth)
            assert not any(is_reset(sock, 0.2) for sock in held)  # the first four are still there
            assert push(agg.url, wire_snapshot("V1", seq=1), token).status == 200  # another address: served
        assert refused(agg.url)["max_pending_per_source"] == 1
        assert agg.stop() == 0


def test_a_crowd_of_idle_connections_cannot_lock_out_a_real_client(tmp_path: Path) -> None:
    """12 pending at most: 30 idle connections from 30 addresses; each new one cuts the oldest idle one, and a
    push, a scrape and a health check still get through."""
    path, token = write_config(tmp_path)
    with AggregatorProcess(path) as agg:
        sources = [f"127.0.1.{i}" for i in range(1, 31)]
        with idle_connections(agg.url, sources) as held:
            cut = [sock for sock in held[:18] if is_reset(sock)]
            assert len(cut) == 18  # the 18 oldest made room
            assert not any(is_reset(sock, 0.2) for sock in held[18:])
            assert push(agg.url, wire_snapshot("V1", seq=1), token).status == 200
            _, pending = gauges(agg.url)
            assert pending is not None and pending <= 12
        counts = refused(agg.url)
        assert counts["max_pending"] >= 18
        lines = [r for r in agg.logs if r["message"] == "connection refused: max_pending"]
        assert 1 <= len(lines) <= counts["max_pending"]
        assert agg.stop() == 0


def test_total_cap_refuses_when_every_connection_is_busy(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path, limits={"max_connections": 10})
    with AggregatorProcess(path) as agg:
        parts = urlsplit(agg.url)
        busy = []
        try:
            for i in range(10):  # each has completed a request and stays open (keep-alive): not pending
                sock = socket.create_connection((parts.hostname, parts.port), 10, source_address=(f"127.0.2.{i}", 0))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                busy.append(sock)
            with idle_connections(agg.url, ["127.0.2.100"]) as (extra,):
                assert is_reset(extra)
        finally:
            for sock in busy:
                sock.close()
        wait_for(lambda: refused(agg.url)["max_connections"] == 1, 20, what="the refusal counted")
        assert agg.stop() == 0


def test_first_headers_have_a_deadline(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path, limits={"header_timeout_s": 0.5, "idle_timeout_s": 600})
    with AggregatorProcess(path) as agg:
        parts = urlsplit(agg.url)
        with socket.create_connection((parts.hostname, parts.port), 10) as slow:
            slow.sendall(b"POST /api/v1/telemetry HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            assert is_reset(slow)
        assert refused(agg.url)["header_timeout"] == 1
        assert gauges(agg.url) == (1, 0)  # the scrape's own connection, past its headers
        assert agg.stop() == 0


def test_tls_handshake_has_a_deadline_and_idle_tls_connections_stay_bounded(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    cert = ca.issue("localhost")
    tls = {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}
    path, token = write_config(tmp_path, tls=tls, limits={"tls_handshake_timeout_s": 0.5})
    with AggregatorProcess(path) as agg:
        url = agg.url.replace("http://", "https://")
        with idle_connections(agg.url, ["127.0.3.1", "127.0.3.2"]) as (silent, half):
            half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, no more
            assert is_reset(silent) and is_reset(half)
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        parts = urlsplit(url)
        with (
            socket.create_connection((parts.hostname, parts.port), 10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            body = codec.encode_wire(wire_snapshot("V1", seq=1))
            head = "POST /api/v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            head += f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            text = b""
            while chunk := sock.recv(65536):
                text += chunk
        assert b'telemetry_connections_refused_total{reason="tls_handshake"} 2.0' in text
        assert agg.stop() == 0


def test_a_trusted_proxy_names_the_client_for_logs_and_is_exempt_from_the_per_source_cap(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path, trusted_proxies=["127.0.0.5"])
    with AggregatorProcess(path) as agg:
        forwarded = {"X-Forwarded-For": "192.0.2.1, 203.0.113.9"}
        assert push(agg.url, wire_snapshot("V1"), "wrong-token", **forwarded).status == 401
        via_proxy = _push_from(agg.url, "127.0.0.5", forwarded)
        direct = _push_from(agg.url, "127.0.0.6", forwarded)
        assert via_proxy == direct == 401
        rejected = wait_for(
            lambda: len(lines := [r for r in agg.logs if r["message"].startswith("push rejected")]) == 3 and lines,
            20,
            what="three refusals logged",
        )
        assert [r["context"]["remote"] for r in rejected] == ["127.0.0.1", "203.0.113.9", "127.0.0.6"]
        with idle_connections(agg.url, ["127.0.0.5"] * 8) as held:  # twice the per-source cap
            assert not any(is_reset(sock, 0.2) for sock in held)
        assert refused(agg.url)["max_pending_per_source"] == 0
        assert agg.stop() == 0


def _push_from(url: str, source: str, headers: dict[str, str]) -> int:
    parts = urlsplit(url)
    body = codec.encode_wire(wire_snapshot("V1"))
    head = "POST /api/v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
    head += "Authorization: Bearer wrong-token\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), 10, source_address=(source, 0)) as sock:
        sock.sendall(head.encode() + body)
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_out_of_descriptors_the_accept_loop_does_not_flood_the_log(tmp_path: Path) -> None:
    """The descriptor limit lowered under the running service (an operator's `prlimit`, or descriptors used
    elsewhere in the process): accept() fails with EMFILE. asyncio pauses accepting for a second and reports
    each failure; the reports go through the bounded log (5 lines, then a summary), and service resumes once
    descriptors are free again."""
    path, token = write_config(tmp_path)
    with AggregatorProcess(path) as agg:
        assert agg.proc is not None
        pid = agg.proc.pid
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (fds + 5, hard))
        with idle_connections(agg.url, [f"127.0.4.{i}" for i in range(1, 41)]):
            summary = wait_for(
                lambda: [r for r in agg.logs if r["message"].startswith("event loop errors: ")],
                60,
                what="the summary of the accept failures",
            )
            reports = [r for r in agg.logs if r["message"].startswith("socket.accept() out of system resource")]
        assert 5 <= len(reports) <= 5 * (len(summary) + 1)  # 5 per 10 s window, then its summary
        # Not spinning: asyncio retries once a second, ACCEPTS_PER_TICK failures each (~170 per 10 s window;
        # with asyncio's accept count at 4096 it was ~270,000).
        assert summary[0]["context"]["not_logged"]["socket.accept() out of system resource"] < 2_000
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        wait_for(lambda: push(agg.url, wire_snapshot("V1", seq=1), token).status == 200, 30, what="service back")
        assert agg.stop() == 0
