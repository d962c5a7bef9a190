"""Geofences in the running aggregator: config, evaluation on each push, metrics aged at scrape time, reloads.

The app tests run a real server on an ephemeral port with an injected clock; the reload test runs a real
aggregator process and sends it SIGHUP."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from log_capture import captured
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from support import AggregatorProcess, FakeClock, parse_metrics, push, sample, scrape, wait_for, wire_snapshot
from test_config_reload import REFUSED, RELOADED, sighup_and_wait
from test_geofence import AREA, KEEP_OUT, LAT0, LON0, collection, east, feature, square

from tvm_observability import codec
from tvm_observability.aggregator.app import RUNTIME, make_app
from tvm_observability.aggregator.collector import Exposition, disable_created_series
from tvm_observability.aggregator.config import ConfigError, parse_config
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.geofence import GeofenceSettings, parse_zones
from tvm_observability.aggregator.geofence_monitor import GeofenceMonitor
from tvm_observability.aggregator.ingest import parse_snapshot
from tvm_observability.aggregator.settings import derive

Client = TestClient  # type: ignore[type-arg]
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ZONES_UNDER_TEST = parse_zones(collection(AREA, KEEP_OUT))
MakeClient = Callable[..., Awaitable[Client]]
STATUS = "vehicle_geofence_status"


def write_zones(path: Path, *features: dict[str, Any]) -> Path:
    path.write_text(json.dumps(collection(*features)), encoding="utf-8")
    return path


def config_with(zones: Path, **geofences: Any) -> dict[str, Any]:
    return {
        "auth_required": False,
        "environment": "test",
        "vehicles": {"V1": {}},
        "geofences": {"file": str(zones), **geofences},
    }


def at(meters_east: float, seq: int, *, fix: bool = True, age_s: float = 0.2, **extra: Any) -> dict[str, Any]:
    position = {
        "latitude": LAT0 if fix else None,
        "longitude": LON0 + east(meters_east) if fix else None,
        "altitude": None,
        "fix": fix,
        "age_s": age_s,
        **extra,
    }
    return wire_snapshot("V1", seq=seq, position=position)


async def send(client: Client, wire: dict[str, Any]) -> None:
    resp = await client.post(
        "/api/v1/telemetry", data=codec.encode_wire(wire), headers={"Content-Type": "application/msgpack"}
    )
    assert resp.status == 200, await resp.text()


async def status_of(client: Client, vehicle: str = "V1") -> tuple[str, dict[Any, float]]:
    resp = await client.get("/metrics")
    samples = parse_metrics(await resp.text())
    hot = [
        s
        for s in ("inside", "outside_operating_area", "in_keep_out", "unknown")
        if sample(samples, STATUS, vehicle_id=vehicle, status=s) == 1.0
    ]
    assert len(hot) == 1, hot  # one-hot
    return hot[0], samples


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: MakeClient, clock: FakeClock, tmp_path: Path) -> Client:
    zones = write_zones(tmp_path / "zones.geojson", AREA, KEEP_OUT)
    return await aiohttp_client(make_app(parse_config(config_with(zones, margin_m=5, max_fix_age_s=10)), clock=clock))


async def test_a_vehicle_driven_out_of_its_area_and_into_a_keep_out_zone(client: Client) -> None:
    assert (await status_of(client))[0] == "unknown"  # never heard from
    await send(client, at(0, 1))
    status, samples = await status_of(client)
    assert status == "inside"
    assert sample(samples, "vehicle_geofence_boundary_distance_meters", vehicle_id="V1") == pytest.approx(250, abs=0.1)
    assert sample(samples, "geofence_zones", kind="operating_area") == 1.0
    assert sample(samples, "geofence_zones", kind="keep_out") == 1.0
    await send(client, at(520, 2))
    status, samples = await status_of(client)
    assert status == "outside_operating_area"
    assert sample(samples, "vehicle_geofence_violation", vehicle_id="V1", zone="campus", kind="operating_area") == 1
    assert sample(samples, "vehicle_geofence_boundary_distance_meters", vehicle_id="V1") == pytest.approx(-20, abs=0.1)
    await send(client, at(497, 3))  # 3 m back in: within the 5 m margin, still outside
    assert (await status_of(client))[0] == "outside_operating_area"
    await send(client, at(-300, 4))
    status, samples = await status_of(client)
    assert status == "in_keep_out"
    assert sample(samples, "vehicle_geofence_violation", vehicle_id="V1", zone="pond", kind="keep_out") == 1.0
    assert sample(samples, "vehicle_geofence_violation", vehicle_id="V1", zone="campus", kind="operating_area") is None
    await send(client, at(0, 5))
    status, samples = await status_of(client)
    assert status == "inside"
    assert [k for k in samples if k[0] == "vehicle_geofence_violation"] == []


async def test_a_fix_that_ages_turns_unknown_at_scrape_time_and_the_violation_stays(
    client: Client, clock: FakeClock
) -> None:
    await send(client, at(-300, 1))
    assert (await status_of(client))[0] == "in_keep_out"
    clock.advance(9.7)  # fix taken 0.2 s before the push: 9.9 s old
    assert (await status_of(client))[0] == "in_keep_out"
    clock.advance(0.2)
    status, samples = await status_of(client)
    assert status == "unknown"
    assert sample(samples, "vehicle_geofence_violation", vehicle_id="V1", zone="pond", kind="keep_out") == 1.0
    assert sample(samples, "vehicle_geofence_boundary_distance_meters", vehicle_id="V1") is None


async def test_no_fix_a_stale_fix_or_a_poor_fix_is_unknown_never_a_violation(client: Client) -> None:
    await send(client, at(0, 1, fix=False))
    assert (await status_of(client))[0] == "unknown"
    await send(client, at(-300, 2, age_s=10.5))
    assert (await status_of(client))[0] == "unknown"
    await send(client, at(-300, 3, accuracy_m=60.0))  # worse than max_accuracy_m (50)
    status, samples = await status_of(client)
    assert status == "unknown"
    assert [k for k in samples if k[0] == "vehicle_geofence_violation"] == []


async def test_the_fix_accuracy_widens_the_boundary(client: Client) -> None:
    await send(client, at(503, 1, accuracy_m=4.0))  # 3 m out, good to 4 m: not a violation yet
    assert (await status_of(client))[0] == "inside"
    await send(client, at(505, 2, accuracy_m=4.0))
    assert (await status_of(client))[0] == "outside_operating_area"


async def test_a_zone_far_from_the_fleet_is_warned_about(aiohttp_client: MakeClient, tmp_path: Path) -> None:
    """A file in [lat, lon] order around Munich is valid GeoJSON, thousands of km away: a warning says so."""
    swapped = feature("campus", "operating_area", [[[lat, lon] for lon, lat in square(LON0, LAT0, 500.0)]])
    zones = write_zones(tmp_path / "swapped.geojson", swapped)
    client = await aiohttp_client(make_app(parse_config(config_with(zones))))
    with captured("tvm_observability.aggregator.ingest") as log:
        await send(client, at(0, 1))
        await send(client, at(1, 2))
    warnings = [r for r in log.records if "outside operating area campus" in r.getMessage()]
    assert len(warnings) == 1
    assert "[latitude, longitude] order" in warnings[0].getMessage()


async def test_new_zones_judge_the_last_fix_again(client: Client, tmp_path: Path) -> None:
    await send(client, at(0, 1))
    assert (await status_of(client))[0] == "inside"
    moved = write_zones(tmp_path / "moved.geojson", feature("site", "keep_out", [square(LON0, LAT0, 20.0)]))
    rt = client.app[RUNTIME]  # type: ignore[union-attr]
    rt.apply(derive(parse_config(config_with(moved))))
    status, samples = await status_of(client)
    assert status == "in_keep_out"
    assert sample(samples, "geofence_zones", kind="keep_out") == 1.0
    assert sample(samples, "geofence_zones", kind="operating_area") == 0.0


async def test_no_geofence_series_while_geofencing_is_off(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app(parse_config({"auth_required": False, "vehicles": {"V1": {}}})))
    await send(client, at(0, 1))
    text = await (await client.get("/metrics")).text()
    assert "vehicle_geofence" not in text
    assert "geofence_zones " not in text and "geofence_zones{" not in text


def violating_monitor(fleet: FleetState) -> GeofenceMonitor:
    """A monitor that has judged every vehicle of `fleet` with a fix against a zone around V1's position: every
    geofence series has a sample."""
    snapshots = [v.snapshot for v in fleet if v.snapshot is not None and v.snapshot.position is not None]
    fix = next(s.position for s in snapshots if s.position is not None and s.position.fix)
    assert fix is not None and fix.longitude is not None and fix.latitude is not None
    zones = parse_zones(
        collection(
            feature("far", "operating_area", [square(fix.longitude + 1.0, fix.latitude, 100.0)]),
            feature("here", "keep_out", [square(fix.longitude, fix.latitude, 100.0)]),
        )
    )
    monitor = GeofenceMonitor(zones, GeofenceSettings(max_fix_age_s=1e9))
    for snapshot in snapshots:
        monitor.observe(snapshot, fleet.clock.monotonic())
    return monitor


def test_a_bad_zones_file_names_every_problem_under_its_key(tmp_path: Path) -> None:
    bad = write_zones(
        tmp_path / "bad.geojson",
        feature("a", "parking", [square(LON0, LAT0, 10)]),
        feature("b", "keep_out", [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]),
    )
    with pytest.raises(ConfigError) as caught:
        parse_config({**config_with(bad, margin_m=-1)})
    problems = caught.value.problems
    assert any(p.startswith(f"geofences.file: {bad}: features[0] (a).properties.kind") for p in problems)
    assert any(
        p.startswith(f"geofences.file: {bad}: features[1] (b).geometry.coordinates[0]: ring not") for p in problems
    )
    assert any(p.startswith("geofences.margin_m: must be a number >= 0") for p in problems)
    with pytest.raises(ConfigError, match=r"geofences\.file: .*missing\.geojson: cannot read file"):
        parse_config(config_with(tmp_path / "missing.geojson"))


def test_reload_with_a_broken_zones_file_keeps_the_running_zones(tmp_path: Path) -> None:
    """A real aggregator process: SIGHUP with a good file applies it, with a broken one keeps the old zones."""
    zones = write_zones(tmp_path / "zones.geojson", AREA, KEEP_OUT)
    path = tmp_path / "aggregator.yaml"
    path.write_text(yaml.safe_dump(config_with(zones)), encoding="utf-8")
    with AggregatorProcess(path) as agg:
        assert push(agg.url, at(-300, 1)).status == 200
        samples = scrape(agg.url)
        assert sample(samples, STATUS, vehicle_id="V1", status="in_keep_out") == 1.0
        zones.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}', encoding="utf-8")
        sighup_and_wait(agg, REFUSED)
        refused = [r["message"] for r in agg.logs if r.get("message", "").startswith("config reload refused: ")]
        assert f"config reload refused: geofences.file: {zones}: features[0].properties: must be an object " in (
            "\n".join(refused)
        )
        assert push(agg.url, at(-300, 2)).status == 200
        samples = scrape(agg.url)
        assert sample(samples, STATUS, vehicle_id="V1", status="in_keep_out") == 1.0  # the old zones still judge
        assert sample(samples, "geofence_zones_reloads_total", result="failure") == 1.0
        assert sample(samples, "geofence_zones_last_reload_success") == 0.0
        write_zones(zones, AREA)  # the pond is gone
        sighup_and_wait(agg, RELOADED)
        assert push(agg.url, at(-300, 3)).status == 200
        samples = scrape(agg.url)
        assert sample(samples, STATUS, vehicle_id="V1", status="inside") == 1.0
        assert sample(samples, "geofence_zones", kind="keep_out") == 0.0
        assert sample(samples, "geofence_zones_reloads_total", result="success") == 1.0
        assert sample(samples, "geofence_zones_last_reload_success") == 1.0


def test_a_violation_at_the_last_known_fix_survives_an_aggregator_restart(tmp_path: Path) -> None:
    """A vehicle silent in a keep-out zone stays paged across a restart: the restored state's last fix is
    judged again at start (status `unknown`, the fix is old; the violation series is back)."""
    zones = write_zones(tmp_path / "zones.geojson", AREA, KEEP_OUT)
    path = tmp_path / "aggregator.yaml"
    path.write_text(yaml.safe_dump({**config_with(zones), "state_file": str(tmp_path / "state.msgpack")}), "utf-8")
    state = tmp_path / "state.msgpack"
    with AggregatorProcess(path) as agg:
        assert push(agg.url, at(-300, 1)).status == 200
        assert sample(scrape(agg.url), "vehicle_geofence_violation", vehicle_id="V1", zone="pond", kind="keep_out")
        wait_for(state.is_file, 30, what="the state file written")
    with AggregatorProcess(path) as agg:
        samples = scrape(agg.url)
    assert sample(samples, "vehicle_geofence_violation", vehicle_id="V1", zone="pond", kind="keep_out") == 1.0
    assert sample(samples, STATUS, vehicle_id="V1", status="unknown") == 1.0


def test_metrics_fast_path_writes_the_reference_bytes_as_statuses_change() -> None:
    """/metrics renders the per-vehicle geofence families from cached text: the bytes stay those of
    prometheus_client's encoders over the reference collector, in both formats, as statuses and fixes move."""
    clock = FakeClock()
    fleet = FleetState(("V1", "V2", "V3", "V4"), FleetSettings(), clock=clock)
    monitor = GeofenceMonitor(ZONES_UNDER_TEST, GeofenceSettings(max_fix_age_s=10))
    disable_created_series()
    exposition = Exposition(fleet, monitor)

    def push_at(vid: str, meters_east: float | None, seq: int) -> None:
        wire = at(meters_east if meters_east is not None else 0, seq, fix=meters_east is not None)
        wire["vehicle_id"] = vid
        snap = parse_snapshot(wire)
        fleet.apply(snap)
        monitor.observe(snap, clock.monotonic())

    def same() -> None:
        assert exposition.render("")[0] == generate_latest(exposition.registry)
        assert exposition.render(OPENMETRICS)[0] == generate_openmetrics(exposition.registry)

    same()  # nobody heard from: all unknown
    for seq, layout in enumerate(((0, 600, -300, None), (600, -300, 0, 10), (-300, 0, 600, -300)), start=1):
        for vid, meters in zip(("V1", "V2", "V3", "V4"), layout, strict=True):
            push_at(vid, meters, seq)
        same()
    clock.advance(11)  # every fix stale: unknown, violations kept
    same()
    text = exposition.render("")[0].decode()
    assert 'vehicle_geofence_status{status="unknown",vehicle_id="V1"} 1.0' in text
    assert 'vehicle_geofence_violation{kind="keep_out",vehicle_id="V1",zone="pond"} 1.0' in text


async def test_a_breach_during_a_link_outage_is_reported_when_the_backlog_arrives(client: Client) -> None:
    """Live: inside. The backlog (journalled during an outage) went outside and into the keep-out zone and back:
    each breach is reported once when the batch arrives (a log line and a counter), a retried batch reports
    nothing more, and the live status stays what the live pushes say."""
    await send(client, at(0, 1))
    backlog = [at(0, 2), at(520, 3), at(530, 4), at(0, 5), at(-300, 6), at(0, 7)]
    body = codec.encode_batch([codec.encode_wire(w) for w in backlog])
    headers = {"Content-Type": "application/msgpack"}
    with captured("tvm_observability.aggregator.ingest") as logs:
        for _ in range(2):  # the second time: a retry of the same batch
            resp = await client.post("/api/v1/telemetry/history", data=body, headers=headers)
            assert resp.status == 200, await resp.text()
    reports = [r for r in logs.records if r.getMessage().startswith("geofence breach during a link outage")]
    assert [(r.kind, r.zone, r.seq) for r in reports] == [  # type: ignore[attr-defined]
        ("operating_area", "campus", 3),
        ("keep_out", "pond", 6),
    ]
    status, samples = await status_of(client)
    assert status == "inside"
    assert sample(samples, "geofence_outage_breaches_total", kind="operating_area") == 1.0
    assert sample(samples, "geofence_outage_breaches_total", kind="keep_out") == 1.0
