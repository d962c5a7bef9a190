"""POST /api/v1/telemetry/history on a real server: counts of a boot that ended during an outage reach
vehicle_errors_total, live values and liveness are untouched, retries write nothing twice, and the refusals
follow the live path's error model. The history watermark survives in the state image (format 4)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientResponse
from support import FakeClock, parse_metrics, sample, wire_snapshot
from test_app import TOKENS, Client, MakeClient

from tvm_observability import codec
from tvm_observability.aggregator import state_image
from tvm_observability.aggregator.app import RUNTIME, make_app
from tvm_observability.aggregator.config import parse_config
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.history import accept_batch
from tvm_observability.aggregator.ingest import parse_snapshot
from tvm_observability.auth import hash_token
from tvm_observability.model import HISTORY_PATH, ROUTING_HEADER


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: MakeClient, clock: FakeClock) -> Client:
    config = parse_config(
        {
            "offline_after_s": 15,
            "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in TOKENS.items()},
            "history": {"max_batch_snapshots": 4, "max_body_bytes": 8192},
        }
    )
    return await aiohttp_client(make_app(config, clock=clock))


async def send(client: Client, path: str, body: Any, vehicle: str = "V1", **headers: str) -> ClientResponse:
    data = body if isinstance(body, bytes) else codec.encode_wire(body)
    all_headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {TOKENS[vehicle]}", **headers}
    return await client.post(path, data=data, headers=all_headers)


def batch(*wires: dict[str, Any]) -> bytes:
    return codec.encode_batch([codec.encode_wire(w) for w in wires])


async def metrics(client: Client) -> Any:
    return parse_metrics(await (await client.get("/metrics")).text())


async def test_a_boot_that_ended_in_the_outage_is_counted_and_live_values_stay(client: Client, clock) -> None:
    assert (await send(client, "/api/v1/telemetry", wire_snapshot(boot_id="b1", seq=5, errors={"E1": 1}))).status == 200
    # Outage: b1 counted E1 up to 3, then the bridge was killed; b2 is live after the link returned.
    live = wire_snapshot(boot_id="b2", seq=2, errors={"E1": 1}, battery={"percentage": 50.0, "age_s": 0.1})
    assert (await send(client, "/api/v1/telemetry", live)).status == 200
    clock.advance(20)  # the live vehicle is now offline: history must not revive it
    old = [
        wire_snapshot(boot_id="b1", seq=s, errors={"E1": e}, battery={"percentage": 90.0, "age_s": 0.1})
        for s, e in ((6, 2), (7, 3))
    ]
    response = await send(client, HISTORY_PATH, batch(*old), **{ROUTING_HEADER: "V1"})
    assert response.status == 200
    assert (await response.json())["no_store"] == 2
    samples = await metrics(client)
    assert sample(samples, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 4  # b1: 3, b2: 1
    assert sample(samples, "vehicle_up", vehicle_id="V1") == 0
    vehicle = client.app[RUNTIME].fleet.get("V1")
    assert vehicle is not None and vehicle.boot_id == "b2" and vehicle.snapshot is not None
    assert vehicle.snapshot.boot_id == "b2" and vehicle.snapshot.battery is not None
    assert vehicle.snapshot.battery.percentage == 50.0  # the live value, not the backlog's 90

    # The same batch again (its acknowledgement was lost): acknowledged, nothing counted twice.
    again = await send(client, HISTORY_PATH, batch(*old))
    assert again.status == 200 and (await again.json())["already_written"] == 2
    samples = await metrics(client)
    assert sample(samples, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 4
    assert sample(samples, "telemetry_history_snapshots_total", outcome="no_store") == 2
    assert sample(samples, "telemetry_history_snapshots_total", outcome="already_written") == 2


async def test_a_boot_never_seen_live_does_not_become_the_current_one(client: Client) -> None:
    live_at = 1_800_000_000.0
    assert (await send(client, "/api/v1/telemetry", wire_snapshot(boot_id="b3", seq=9, sent_at=live_at))).status == 200
    # b2 started and ended entirely during the outage, before b3: known only from the journal.
    old = wire_snapshot(boot_id="b2", seq=4, errors={"E9": 2}, sent_at=live_at - 60)
    response = await send(client, HISTORY_PATH, batch(old))
    assert response.status == 200
    vehicle = client.app[RUNTIME].fleet.get("V1")
    assert vehicle is not None and vehicle.boot_id == "b3" and list(vehicle.boots) == ["b2", "b3"]
    assert sample(await metrics(client), "vehicle_errors_total", vehicle_id="V1", error_code="E9") == 2
    # The live boot's next push is still accepted as live.
    live = await send(client, "/api/v1/telemetry", wire_snapshot(boot_id="b3", seq=10, sent_at=live_at + 1))
    assert (await live.json())["status"] == "accepted"


async def test_a_boot_that_began_in_the_outage_is_live_when_its_backlog_comes_first(client: Client) -> None:
    live_at = 1_800_000_000.0
    assert (await send(client, "/api/v1/telemetry", wire_snapshot(boot_id="b1", seq=9, sent_at=live_at))).status == 200
    # b1 was killed in the outage; b2 started then, and its backlog arrives before its first live push.
    backlog = wire_snapshot(boot_id="b2", seq=3, sent_at=live_at + 30)
    assert (await send(client, HISTORY_PATH, batch(backlog))).status == 200
    live = await send(client, "/api/v1/telemetry", wire_snapshot(boot_id="b2", seq=40, sent_at=live_at + 67))
    assert (await live.json())["status"] == "accepted"
    assert client.app[RUNTIME].fleet.get("V1").boot_id == "b2"  # type: ignore[union-attr]
    assert sample(await metrics(client), "vehicle_up", vehicle_id="V1") == 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (batch(wire_snapshot("V2")), {}, 403, "forbidden"),
        (batch(wire_snapshot("V1")), {ROUTING_HEADER: "V2"}, 400, "routing_mismatch"),
        (batch(*[wire_snapshot(seq=s) for s in range(1, 6)]), {}, 413, "limit_batch"),
        (batch(wire_snapshot("V1"), wire_snapshot("V2")), {}, 422, "schema"),
        (codec.encode_wire(wire_snapshot("V1")), {}, 422, "schema"),  # one snapshot, not an array
        (batch(wire_snapshot("V1", seq=1), wire_snapshot("V1", seq=-1)), {}, 422, "out_of_range"),
        (b"\x92\xc1", {}, 400, "malformed"),
        (b"\x91" + b"\xa1x" * 5000, {}, 413, "too_large"),
    ],
)
async def test_refusals_follow_the_live_error_model_and_change_nothing(
    client: Client, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    response = await send(client, HISTORY_PATH, body, **headers)
    assert response.status == status
    assert (await response.json())["error"] == reason
    assert client.app[RUNTIME].fleet.get("V1").boots == {}  # type: ignore[union-attr]


async def test_without_a_credential_nothing_is_read(client: Client) -> None:
    response = await client.post(
        HISTORY_PATH, data=batch(wire_snapshot()), headers={"Content-Type": "application/msgpack"}
    )
    assert response.status == 401


def test_history_watermark_survives_the_state_image_and_old_images_migrate() -> None:
    clock = FakeClock()
    fleet = FleetState(["V1"], FleetSettings(), clock=clock)
    accept_batch(fleet, [parse_snapshot(wire_snapshot(boot_id="b1", seq=7, errors={"E1": 2}))], store=False)
    image = state_image.to_image(fleet)
    assert image["format"] == state_image.STATE_FORMAT and image["vehicles"]["V1"]["boots"][0]["history_seq"] == 7
    restored = FleetState(["V1"], FleetSettings(), clock=clock)
    state_image.restore(restored, codec.unpack_state(codec.pack_state(image)), keep_unknown=False)
    record = restored.get("V1").boots["b1"]  # type: ignore[union-attr]
    assert record.history_seq == 7 and record.errors == {"E1": 2}
    # A format-3 image (no watermark): migrated, nothing of any boot written to history yet.
    old = {**image, "format": 3}
    old["vehicles"] = {
        "V1": {**image["vehicles"]["V1"], "boots": [{"boot_id": "b1", "seq": 7, "errors": {}, "overflow": 0}]}
    }
    assert state_image.migrate(old)["vehicles"]["V1"]["boots"][0]["history_seq"] == 0


async def test_with_backfill_an_offline_vehicle_exports_no_stale_values_but_stays_findable(
    aiohttp_client: MakeClient, clock: FakeClock
) -> None:
    """While history is written to Prometheus, value series stop when the vehicle goes offline (a scraped stale
    value would sit between backfilled ones); the last position stays in /api/v1/vehicles."""
    history = {"remote_write_url": "http://127.0.0.1:9/api/v1/write", "job": "j", "instance": "i"}
    config = parse_config(
        {
            "offline_after_s": 15,
            "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in TOKENS.items()},
            "history": history,
        }
    )
    client = await aiohttp_client(make_app(config, clock=clock))
    assert (await send(client, "/api/v1/telemetry", wire_snapshot(seq=1))).status == 200
    online = await metrics(client)
    assert sample(online, "vehicle_battery_level", vehicle_id="V1") == 76.5
    assert sample(online, "vehicle_latitude", vehicle_id="V1") == 52.52
    clock.advance(20)
    offline = await metrics(client)
    assert sample(offline, "vehicle_up", vehicle_id="V1") == 0
    for name in ("vehicle_battery_level", "vehicle_latitude", "vehicle_pose_x_meters"):
        assert sample(offline, name, vehicle_id="V1") is None, name
    assert sample(offline, "vehicle_sensor_status", vehicle_id="V1", sensor="lidar", status="ok") is None
    assert sample(offline, "vehicle_last_heartbeat_timestamp_seconds", vehicle_id="V1") is not None
    vehicles = await (await client.get("/api/v1/vehicles")).json()
    row = next(v for v in vehicles["vehicles"] if v["vehicle_id"] == "V1")
    assert row["latitude"] == 52.52
    # Back online: the values are exported again.
    assert (await send(client, "/api/v1/telemetry", wire_snapshot(seq=2))).status == 200
    assert sample(await metrics(client), "vehicle_battery_level", vehicle_id="V1") == 76.5


def test_history_config_names_every_problem() -> None:
    from tvm_observability.aggregator.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({"history": {"remote_write_url": "ftp://prometheus/api/v1/write", "job": "", "timeout_s": 0}})
    text = str(info.value)
    for fragment in ("history.remote_write_url: must be an http", "history.job:", "history.timeout_s:"):
        assert fragment in text
    with pytest.raises(ConfigError, match="remote_write_url needs job and instance"):
        parse_config({"history": {"remote_write_url": "http://127.0.0.1:9090/api/v1/write", "job": "j"}})
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "history": {
                    "remote_write_url": "http://p:9090/api/v1/write",
                    "job": "j",
                    "instance": "i",
                    "basic_username": "u",
                    "ca_file": "/nonexistent.pem",
                }
            }
        )
    text = str(info.value)
    for fragment in (
        "basic_username and basic_password_file go together",
        "history.ca_file: cannot read",
        "ca_file is set, but remote_write_url is not https",
    ):
        assert fragment in text
