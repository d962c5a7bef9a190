"""Pusher against real HTTP(S) servers in this process: latest wins, retries, refusals, TLS verification.

The pusher runs its own thread and loop; the server runs in the test's loop, so the test polls
with asyncio.sleep to keep serving while it waits.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from tvm_observability.bridge.params import ClientSettings
from tvm_observability.bridge.pusher import Pusher
from tvm_observability.model import ROUTING_HEADER


async def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Recorder:
    """A telemetry endpoint that records bodies and answers from a script of responses."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.script = list(script or [])
        self.gate: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        if self.gate is not None:
            await self.gate.wait()
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            return web.json_response({"status": "accepted"})
        headers = {"Retry-After": "0"} if status == 503 else {}
        return web.json_response({"error": f"code_{status}", "detail": "x"}, status=status, headers=headers)


async def serve(recorder: Recorder, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/api/v1/telemetry", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{port}/api/v1/telemetry"


def fast_pusher(url: str, ca_file: str = "") -> Pusher:
    pusher = Pusher(
        ClientSettings(
            url, "V7", request_timeout_s=5.0, backoff_initial_s=0.05, backoff_max_s=0.2, token="tok", ca_file=ca_file
        )
    )
    pusher.start()
    return pusher


async def test_latest_body_wins_while_a_request_is_in_flight():
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    runner, url = await serve(recorder)
    pusher = fast_pusher(url)
    try:
        pusher.offer(b"b0")
        await until(lambda: recorder.bodies == [b"b0"], what="first body")
        for body in (b"b1", b"b2", b"b3"):
            pusher.offer(body)
        recorder.gate.set()
        await until(lambda: pusher.status().accepted == 2, what="two accepted")
        assert recorder.bodies == [b"b0", b"b3"]
        assert recorder.headers[0]["Authorization"] == "Bearer tok"
        assert recorder.headers[0]["Content-Type"] == "application/msgpack"
        # Every POST, retries and later bodies included, names the vehicle for a routing load balancer.
        assert [h.get(ROUTING_HEADER) for h in recorder.headers] == ["V7", "V7"]
    finally:
        assert await asyncio.to_thread(pusher.close)
        await runner.cleanup()


async def test_unavailable_is_retried_with_the_same_body_then_recovers():
    recorder = Recorder(script=[503, 503])
    runner, url = await serve(recorder)
    pusher = fast_pusher(url)
    try:
        pusher.offer(b"only")
        await until(lambda: pusher.status().accepted == 1, what="accepted after retries")
        assert recorder.bodies == [b"only"] * 3
        assert [h.get(ROUTING_HEADER) for h in recorder.headers] == ["V7"] * 3
        status = pusher.status()
        assert (status.failures, status.consecutive_failures, status.rejected) == (2, 0, False)
        link = pusher.link.report()  # the vehicle's view of the link, for its snapshots
        assert (link.failed_attempts_total, link.outages_total) == (2, 1)
        assert link.last_outage is not None and link.last_outage.ended_at is not None
        assert link.rtt_s is not None and 0 < link.rtt_s < 5.0 and link.outage_seconds_total > 0
    finally:
        assert await asyncio.to_thread(pusher.close)
        await runner.cleanup()


async def test_a_refusal_is_not_retried_and_marks_the_link_rejected():
    recorder = Recorder(script=[401])
    runner, url = await serve(recorder)
    pusher = fast_pusher(url)
    try:
        pusher.offer(b"b0")
        await until(lambda: pusher.status().attempts == 1, what="one attempt")
        status = pusher.status()
        assert status.rejected and "401" in status.last_error and "code_401" in status.last_error
        assert pusher.link.report().outages_total == 0  # the link carried the refusal
        pusher.offer(b"b1")  # the next period's snapshot is tried normally
        await until(lambda: pusher.status().accepted == 1, what="next body accepted")
        assert recorder.bodies == [b"b0", b"b1"]
    finally:
        assert await asyncio.to_thread(pusher.close)
        await runner.cleanup()


async def test_unreachable_aggregator_backs_off_and_close_is_prompt():
    pusher = Pusher(
        ClientSettings(
            "http://127.0.0.1:9/api/v1/telemetry",
            "V7",
            request_timeout_s=2.0,
            backoff_initial_s=0.05,
            backoff_max_s=10.0,
        )
    )
    pusher.start()
    pusher.offer(b"b0")
    await until(lambda: pusher.status().failures >= 3, what="a few failures")
    status = pusher.status()
    assert status.accepted == 0 and status.retry_in_s > 0 and status.last_error
    assert await asyncio.to_thread(pusher.close, 5.0)  # even while sleeping in a backoff


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_verifies_the_server_with_ca_file(certificate):
    key, cert = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    recorder = Recorder()
    runner, url = await serve(recorder, context)
    trusting = fast_pusher(url, ca_file=str(cert))
    default_trust = fast_pusher(url)  # the system store does not know this self-signed certificate
    try:
        trusting.offer(b"secure")
        default_trust.offer(b"refused")
        await until(lambda: trusting.status().accepted == 1, what="accepted over verified TLS")
        await until(lambda: default_trust.status().failures >= 1, what="unverified server refused")
        assert "certificate" in default_trust.status().last_error.lower()
        assert default_trust.status().accepted == 0
        assert recorder.bodies == [b"secure"]
    finally:
        assert await asyncio.to_thread(trusting.close)
        assert await asyncio.to_thread(default_trust.close)
        await runner.cleanup()
