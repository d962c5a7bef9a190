"""Backfill through a real aggregator into a real Prometheus (Debian package, remote-write receiver, out-of-order
window): values at the vehicle's own timestamps corrected by its clock skew, in the scrape's series labels;
503 + Retry-After while Prometheus is down (nothing lost: the batch is written when it is sent again); too old
and future snapshots dropped and counted; a retried batch writes nothing twice."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from bridge_support import free_port
from peers import PeerServer, require_binary
from support import AggregatorProcess, push, request, sample, scrape, wire_snapshot
from tls_certs import ThrowawayCA

from tvm_observability import codec
from tvm_observability.demo import prometheus_setup
from tvm_observability.model import HISTORY_PATH

SKEW_S = 100.0
"""The vehicle's clock runs this far ahead of the aggregator's."""


def post_batch(url: str, token: str, wires: list[dict[str, Any]]) -> Any:
    body = codec.encode_batch([codec.encode_wire(w) for w in wires])
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {token}"}
    return request(url + HISTORY_PATH, "POST", body, headers)


def prometheus_args(binary: str, tmp_path: Path, port: int) -> list[str]:
    config = tmp_path / "prometheus.yml"
    config.write_text("storage:\n  tsdb:\n    out_of_order_time_window: 1h\n", encoding="utf-8")
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        prometheus_setup.REMOTE_WRITE_RECEIVER,
    ]


@pytest.mark.peer
def test_backlog_values_land_at_their_own_time_and_only_once(tmp_path, write_config, fleet_tokens) -> None:
    binary = require_binary("prometheus")
    port = free_port()
    history = {
        "remote_write_url": f"http://127.0.0.1:{port}/api/v1/write",
        "job": "telemetry_aggregator",
        "instance": "fleet.example:9100",
        "max_sample_age_s": 600,
        "timeout_s": 5,
    }
    token = fleet_tokens["V1"]
    with AggregatorProcess(write_config(fleet_tokens, history=history)) as agg:
        now = time.time()
        live = wire_snapshot("V1", boot_id="b2", seq=1, sent_at=now + SKEW_S)
        assert push(agg.url, live, token).status == 200  # the aggregator learns the vehicle's clock skew
        times = [round(now - 90 + i) for i in range(30)]  # the outage, on the aggregator's clock (whole seconds)
        outage = [
            wire_snapshot(
                "V1",
                boot_id="b1",
                seq=i + 1,
                sent_at=t + SKEW_S,
                battery={"percentage": 90.0 - i, "age_s": 0.1},
                errors={"E1": 1 + i // 10},
            )
            for i, t in enumerate(times)
        ]
        too_old = wire_snapshot("V1", boot_id="b1", seq=31, sent_at=now - 1000 + SKEW_S, errors={"E1": 3})
        future = wire_snapshot("V1", boot_id="b1", seq=32, sent_at=now + 600 + SKEW_S, errors={"E1": 3})
        batch = [*outage, too_old, future]

        # Prometheus down: 503 with Retry-After, the vehicle keeps the batch; the counts are merged all the same.
        down = post_batch(agg.url, token, batch)
        assert down.status == 503 and int(down.headers["retry-after"]) > 0
        assert down.json()["error"] == "history_unavailable"
        samples = scrape(agg.url)
        assert sample(samples, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 3
        assert sample(samples, "telemetry_history_remote_write_failures_total") == 1

        with PeerServer(prometheus_args(binary, tmp_path, port)) as prometheus:
            answer = post_batch(agg.url, token, batch)
            assert answer.status == 200, answer.body
            assert (answer.json()["written"], answer.json()["dropped"]) == (30, 2)
            at = f"{now + 1:.3f}"
            result = prometheus.get_json(f"/api/v1/query?query=vehicle_battery_level%5B10m%5D&time={at}")
            series = result["data"]["result"]
            assert len(series) == 1
            assert series[0]["metric"] == {
                "__name__": "vehicle_battery_level",
                "vehicle_id": "V1",
                "job": "telemetry_aggregator",
                "instance": "fleet.example:9100",
            }
            got = [(round(float(t)), float(v)) for t, v in series[0]["values"]]
            assert got == [(t, 90.0 - i) for i, t in enumerate(times)]  # every second, its own value, no skew

            again = post_batch(agg.url, token, batch)  # its acknowledgement was lost: sent again
            assert again.status == 200 and again.json()["already_written"] == 32
            result = prometheus.get_json(
                f"/api/v1/query?query=count_over_time(vehicle_battery_level%5B10m%5D)&time={at}"
            )
            assert result["data"]["result"][0]["value"][1] == "30"  # nothing twice

        samples = scrape(agg.url)
        assert sample(samples, "telemetry_history_snapshots_dropped_total", reason="too_old") == 1
        assert sample(samples, "telemetry_history_snapshots_dropped_total", reason="future") == 1
        assert sample(samples, "telemetry_history_snapshots_total", outcome="written") == 30
        assert sample(samples, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 3
        # Live values and liveness are the live push's, not the backlog's.
        assert sample(samples, "vehicle_battery_level", vehicle_id="V1") == live["battery"]["percentage"]


class Receiver:
    """An https remote-write endpoint that checks basic auth (the aggregator's client is what is tested here)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        await request.read()
        expected = "Basic " + base64.b64encode(b"rw-user:s3cret-pass").decode()
        return web.Response(status=204 if request.headers.get("Authorization") == expected else 401)


async def test_remote_write_over_verified_tls_with_basic_auth(tmp_path, write_config, fleet_tokens) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    server_cert = ca.issue()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert.cert_file, server_cert.key_file)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/api/v1/write", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/api/v1/write"
    password = tmp_path / "rw.password"
    password.write_text("s3cret-pass\n", encoding="utf-8")
    password.chmod(0o600)
    history = {"remote_write_url": url, "job": "j", "instance": "i", "basic_username": "rw-user"}
    token = fleet_tokens["V1"]
    wire = wire_snapshot("V1", boot_id="b1", seq=1, sent_at=time.time() - 10)
    try:
        verified = {**history, "ca_file": str(ca.ca_file), "basic_password_file": str(password)}
        with AggregatorProcess(write_config(fleet_tokens, history=verified)) as agg:
            answer = await asyncio.to_thread(post_batch, agg.url, token, [wire])
            assert answer.status == 200 and answer.json()["written"] == 1, answer.body
            assert receiver.requests[-1]["Content-Encoding"] == "snappy"
            assert not any("s3cret" in line for line in agg.raw_stderr)
        # The system trust store does not know the throwaway CA: refused, the vehicle keeps its batch.
        unverified = {**history, "basic_password_file": str(password)}
        config = write_config(fleet_tokens, history=unverified)
        with AggregatorProcess(config) as agg:
            before = len(receiver.requests)
            answer = await asyncio.to_thread(post_batch, agg.url, token, [wire])
            assert answer.status == 503 and "certificate" in answer.json()["detail"].lower()
            assert len(receiver.requests) == before
    finally:
        await runner.cleanup()
