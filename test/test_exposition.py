"""/metrics fast path: `Exposition.render` writes exactly the bytes prometheus_client's encoders write
for the reference `FleetCollector.collect()`, in both formats, as vehicles change, go offline and restart."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import require_binary
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from support import parse_metrics, sample, wire_snapshot

from tvm_observability.aggregator import collector, slices, state_image
from tvm_observability.aggregator.collector import (
    FORMATS,
    Exposition,
    ServiceMetrics,
    disable_created_series,
)
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import parse_snapshot

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class FrozenClock:
    def __init__(self) -> None:
        self.mono = 5000.0
        self.wall = 1_767_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall


def make(roster=("V1", "V2", "V3")):
    clock = FrozenClock()
    fleet = FleetState(
        roster,
        FleetSettings(statuses=("idle", "on_mission"), offline_after_s=15.0, max_unknown_vehicles=10),
        clock=clock,
    )
    disable_created_series()  # what the app factory sets at start-up
    exposition = Exposition(fleet)
    metrics = ServiceMetrics(exposition.service_registry)
    return clock, fleet, exposition, metrics


def assert_same(exposition: Exposition) -> bytes:
    """Both formats of the fast path equal the reference encoders over `registry`; returns the text body."""
    text, text_type = exposition.render("")
    assert text == generate_latest(exposition.registry)
    assert text_type.startswith("text/plain")
    om, om_type = exposition.render(OPENMETRICS)
    assert om == generate_openmetrics(exposition.registry)
    assert om_type.startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n")
    return text


def apply(fleet: FleetState, vid: str, **fields) -> None:
    fleet.apply(parse_snapshot(wire_snapshot(vid, **fields)))


def test_render_matches_reference_through_a_vehicle_life():
    clock, fleet, exposition, metrics = make()
    body = assert_same(exposition)  # nobody heard from yet: all offline, ages +Inf
    assert sample(parse_metrics(body.decode()), "vehicle_last_heartbeat_seconds_ago", vehicle_id="V1") == float("inf")

    apply(fleet, "V1", seq=1)
    apply(fleet, "V2", seq=1, status="weird", errors={"E_MOTOR": 2}, battery=None)
    apply(
        fleet, "X9", seq=1, position={"latitude": None, "longitude": None, "altitude": None, "fix": False, "age_s": 1}
    )
    metrics.received.inc(3)
    assert_same(exposition)

    clock.mono += 3.25
    clock.wall += 3.25
    apply(fleet, "V1", seq=2, status="on_mission", sensors={"lidar": {"status": "stale", "rate_hz": None}})
    body = assert_same(exposition)  # V1 re-rendered, V2 and X9 from cache with a new age
    samples = parse_metrics(body.decode())
    assert sample(samples, "vehicle_sensor_status", vehicle_id="V1", sensor="lidar", status="stale") == 1.0
    assert sample(samples, "vehicle_last_heartbeat_seconds_ago", vehicle_id="V2") == 3.25

    clock.mono += 20.0  # everyone offline; the cached status lines must follow
    body = assert_same(exposition)
    assert sample(parse_metrics(body.decode()), "vehicle_status", vehicle_id="V1", status="offline") == 1.0

    apply(fleet, "V1", boot_id="boot-b", seq=1, errors={"E_MOTOR": 1})  # reboot: restarts counter appears
    apply(fleet, "V2", seq=2, errors={"E_MOTOR": 5, "E_GPS": 1})
    body = assert_same(exposition)
    samples = parse_metrics(body.decode())
    assert sample(samples, "vehicle_bridge_restarts_total", vehicle_id="V1") == 1.0
    assert sample(samples, "vehicle_errors_total", vehicle_id="V2", error_code="E_MOTOR") == 5.0
    assert sample(samples, "vehicles_online") == 2.0


def test_render_follows_a_restored_state():
    """restore() replaces VehicleState objects: the cache must not serve the old text."""
    _, fleet, exposition, _ = make()
    apply(fleet, "V1", seq=1)
    assert_same(exposition)
    image = state_image.to_image(fleet)
    apply(fleet, "V1", seq=2, status="on_mission")
    assert_same(exposition)
    state_image.restore(fleet, image, keep_unknown=True)
    assert_same(exposition)


def test_render_with_big_and_odd_values():
    """Go float formatting (exponents from 1e6 up), +Inf ages, negative skew: as prometheus_client writes them."""
    clock, fleet, exposition, _ = make()
    clock.wall = 12_345_678.5
    apply(
        fleet,
        "V1",
        seq=1,
        sent_at=1.0,
        pose={"x": 2.5e6, "y": -3.5e7, "yaw": 0.0, "speed": 1e-9, "frame_id": "m", "age_s": 0.0},
    )
    assert_same(exposition)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["V1", "V2", "V3", "U7"]),
            st.sampled_from(["idle", "on_mission", "nonsense", None]),
            st.floats(min_value=0, max_value=100),
            st.dictionaries(st.sampled_from(["E1", "E2"]), st.integers(0, 10**6), max_size=2),
            st.floats(min_value=0, max_value=40),
        ),
        max_size=12,
    )
)
def test_render_matches_reference_for_any_sequence(events):
    clock, fleet, exposition, _ = make()
    for seq, (vid, status, level, errors, advance) in enumerate(events, start=1):
        battery = {"percentage": level, "voltage": 24.0, "charging": seq % 2 == 0, "age_s": 0.1}
        apply(fleet, vid, seq=seq, status=status, battery=battery, errors=errors)
        clock.mono += advance
        assert_same(exposition)


@pytest.mark.peer
def test_promtool_accepts_render(tmp_path):
    promtool = require_binary("promtool")  # a CI run fails without it
    _, fleet, exposition, _ = make()
    apply(fleet, "V1", seq=1, errors={"E_MOTOR": 2})
    apply(fleet, "V2", seq=1)
    body, _ = exposition.render("")
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


ODD_ACCEPTS = [
    "application/openmetrics-text; version=abc",
    "application/openmetrics-text; version=",
    "application/openmetrics-text; version=1.0.0.0.0",
    "application/openmetrics-text; version=99.0.0; escaping=nonsense",
    "application/openmetrics-text; version=0.0.1",
    "text/plain; version=1.0.0; escaping=bogus",
    "text/plain; version=x",
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    ";;;,,,;=;",
    "\u00e9\x00\x7f",
    "*/*",
]


def test_any_accept_header_gets_one_of_two_formats_and_the_cache_stays_bounded():
    """Issue 10 item 3: an unusual `version=` was a 500, and every distinct one grew the header cache."""
    _, fleet, exposition, _ = make()
    apply(fleet, "V1", seq=1)
    content_types = {content_type for _, content_type in FORMATS}
    for accept in ODD_ACCEPTS + [f"application/openmetrics-text; version=1.0.{i}" for i in range(200)]:
        body, content_type = exposition.render(accept)
        assert content_type in content_types, accept
        assert body == exposition.render(OPENMETRICS if "openmetrics" in content_type else "")[0], accept
    assert len(exposition._headers) <= len(FORMATS)


def test_openmetrics_refused_with_q0_gets_text():
    _, _, exposition, _ = make()
    assert exposition.render("application/openmetrics-text; q=0, text/plain")[1].startswith("text/plain")
    assert exposition.render("application/openmetrics-text; q=0.5")[1].startswith("application/openmetrics-text")


def test_service_metrics_change_no_process_wide_setting():
    """Issue 9: constructing ServiceMetrics must not turn off `*_created` series for the whole process."""
    snippet = (
        "from prometheus_client import CollectorRegistry, Counter, generate_latest\n"
        "from tvm_observability.aggregator.collector import ServiceMetrics\n"
        "ServiceMetrics(CollectorRegistry())\n"
        "other = CollectorRegistry()\n"
        "Counter('unrelated', 'a library user', registry=other).inc()\n"
        "print(generate_latest(other).decode())\n"
    )
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, check=True)
    assert "unrelated_created" in result.stdout


def test_labelled_heads_are_bounded_and_never_change_the_text(monkeypatch):
    """Label values come from vehicles: the cache of formatted line starts holds at most MAX_LABELLED_HEADS and
    starts over when full, and the text stays the reference rendering through it."""
    monkeypatch.setattr(collector, "_LABELLED_HEADS", {})
    monkeypatch.setattr(collector, "MAX_LABELLED_HEADS", 5)
    _, fleet, exposition, _ = make()
    for seq, names in enumerate((["lidar", "camera"], ["front/sonar", "gnss:0"], ["imu.1", "lidar"]), 1):
        sensors = {n: {"status": "ok", "rate_hz": 10.0, "message": ""} for n in names}
        apply(fleet, "V1", seq=seq, sensors=sensors, errors={f"E{seq}": seq})
        apply(fleet, "V2", seq=seq, sensors=sensors)
        assert_same(exposition)
        assert len(collector._LABELLED_HEADS) <= 5


def test_chunks_pause_every_slice_and_stay_whole_while_the_fleet_changes_between_pieces(monkeypatch):
    """A scrape pauses whenever a slice has used its time (here: after every vehicle), and the server runs pushes
    and reloads in those pauses: whatever happens in them, the scrape stays one well-formed exposition with each
    vehicle it started with exactly once per family, and the next scrape is the reference rendering again."""
    monkeypatch.setattr(slices, "SLICE_S", 0.0)
    roster = [f"R{i:04d}" for i in range(57)]
    clock, fleet, exposition, _ = make(roster=roster)
    for vid in roster:
        apply(fleet, vid, seq=1)
    encoder, content_type = FORMATS[0]
    pieces = []
    pauses = 0
    for n, piece in enumerate(exposition.chunks(encoder, content_type)):
        pauses += piece == ""
        pieces.append(piece)
        apply(fleet, roster[n % len(roster)], seq=2 + n)  # a push in every pause and between families
        if n == 1:
            apply(fleet, "X-unknown", seq=1)  # a vehicle arrives mid-scrape
            fleet.reconfigure(roster[:-5], fleet.settings)  # a reload drops five roster vehicles mid-scrape
        clock.mono += 0.01
    assert pauses == len(roster)
    text = "".join(pieces)
    up_lines = [line for line in text.splitlines() if line.startswith("vehicle_up{")]
    assert sorted(up_lines) == sorted(f'vehicle_up{{vehicle_id="{vid}"}} 1.0' for vid in roster)  # each once
    assert sample(parse_metrics(text), "vehicles_total") == len(roster)  # and well formed throughout
    assert_same(exposition)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST", "other"]),
            st.sampled_from(["/api/v1/telemetry", "/metrics", "other"]),
            st.sampled_from([200, 202, 401, 404, 503]),
            st.one_of(
                st.sampled_from([0.0, 0.0005, 0.001, 0.0025, 10.0, 10.000001]),  # on and beside the bounds
                st.floats(min_value=0.0, max_value=30.0, allow_nan=False),
            ),
        ),
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
def test_request_metrics_export_what_prometheus_clients_counter_and_histogram_export(requests):
    """RequestStats and PlainCounter count in plain numbers: the text and OpenMetrics bytes are those of
    prometheus_client's Counters and Histogram with the same names, labels, buckets and observations (label sets in
    order of first use)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from tvm_observability.aggregator.collector import REQUEST_DURATION_BUCKETS, PlainCounter, RequestStats

    disable_created_series()
    reference = CollectorRegistry()
    counter = Counter("http_requests", "HTTP requests handled.", ["method", "endpoint", "status"], registry=reference)
    histogram = Histogram(
        "http_request_duration_seconds",
        "HTTP request handling time.",
        ["endpoint"],
        registry=reference,
        buckets=REQUEST_DURATION_BUCKETS,
    )
    received = Counter("telemetry_snapshots_received", "Snapshots.", registry=reference)
    ours = CollectorRegistry()
    stats = RequestStats()
    ours.register(stats)
    plain = PlainCounter("telemetry_snapshots_received", "Snapshots.")
    ours.register(plain)
    for method, endpoint, status, seconds in requests:
        counter.labels(method, endpoint, str(status)).inc()
        histogram.labels(endpoint).observe(seconds)
        stats.observe(method, endpoint, status, seconds)
        received.inc(status // 100)
        plain.inc(status // 100)
    assert generate_latest(ours) == generate_latest(reference)
    assert generate_openmetrics(ours) == generate_openmetrics(reference)
