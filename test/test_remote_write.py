"""The hand-written remote-write encoder, read back by a real Prometheus (Debian package) with its
remote-write receiver: every sample lands at its own timestamp, in the series its labels name."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from peers import PeerServer, require_binary
from support import request, wait_for

from tvm_observability.aggregator import remote_write
from tvm_observability.demo import prometheus_setup


def test_varints_and_snappy_literals_by_hand() -> None:
    assert remote_write._varint(300) == b"\xac\x02"
    assert remote_write._varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1, ten bytes as protobuf writes it
    block = remote_write.snappy_block(b"abc")
    assert block == b"\x03" + bytes((61 << 2,)) + b"\x02\x00" + b"abc"
    big = remote_write.snappy_block(b"x" * 70000)
    assert big.startswith(remote_write._varint(70000)) and len(big) == 3 + (3 + 65536) + (3 + 4464)


@pytest.mark.peer
def test_a_real_prometheus_stores_every_sample_at_its_timestamp(tmp_path: Path) -> None:
    binary = require_binary("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 15s}\n", encoding="utf-8")
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        "--web.listen-address=127.0.0.1:0",
        prometheus_setup.REMOTE_WRITE_RECEIVER,
    ]
    now_ms = int(time.time() * 1000)
    times = [now_ms - 60_000 + 1000 * i for i in range(60)]  # 60 samples, 1 s apart, the last a second ago
    battery = [(t, 80.0 - i * 0.25) for i, t in enumerate(times)]
    # Many series make a body above one snappy literal (64 KiB): the chunking is read back too.
    filler = [({"__name__": "rw_filler", "n": str(n)}, [(now_ms - 1000, float(n))]) for n in range(1500)]
    series = [
        ({"vehicle_id": "V1", "__name__": "vehicle_battery_level", "job": "telemetry_aggregator"}, battery),
        ({"__name__": "vehicle_pose_x_meters", "vehicle_id": "V1"}, [(times[0], -12.5)]),
        *filler,
    ]
    body = remote_write.encode(series)
    assert len(remote_write.write_request(series)) > 65536
    with PeerServer(args) as prometheus:
        response = request(prometheus.url + "/api/v1/write", "POST", body, remote_write.HEADERS)
        assert response.status == 204, response.body
        at = f"{(now_ms + 1000) / 1000:.3f}"

        def raw(expr: str) -> list[list[object]]:
            result = prometheus.get_json(f"/api/v1/query?query={expr}&time={at}")["data"]["result"]
            return result[0]["values"] if result else []

        values = wait_for(lambda: raw("vehicle_battery_level%5B2m%5D"), 30, what="the written samples")
        assert [(round(float(t) * 1000), float(v)) for t, v in values] == battery  # type: ignore[arg-type]
        labels = prometheus.get_json(f"/api/v1/query?query=vehicle_battery_level&time={at}")["data"]["result"]
        assert labels[0]["metric"] == {
            "__name__": "vehicle_battery_level",
            "job": "telemetry_aggregator",
            "vehicle_id": "V1",
        }
        assert [float(v) for _, v in raw("vehicle_pose_x_meters%5B2m%5D")] == [-12.5]
        count = prometheus.get_json(f"/api/v1/query?query=count(rw_filler)&time={at}")["data"]["result"]
        assert count[0]["value"][1] == "1500"
