"""The operator status page and /api/v1/vehicles: worst-first rows, hostile text escaped, real browser."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from peers import HeadlessChromium, chromium_command, require_binary
from support import REPO, AggregatorProcess, FakeClock, push, request, wait_for, wire_snapshot

from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.fleet_view import build_view
from tvm_observability.aggregator.ingest import parse_snapshot
from tvm_observability.aggregator.status_page import format_age, render

ARTIFACTS = REPO / "test-artifacts"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>&amp;'


def _sensors(**statuses: str) -> dict:
    return {name: {"status": status, "rate_hz": 10.0, "message": ""} for name, status in statuses.items()}


def _fleet() -> tuple[FleetState, FakeClock]:
    clock = FakeClock()
    fleet = FleetState(
        ["GONE", "NEVER", "LOW", "EMPTY", "SENSOR", "FINE", "ESTOP"], FleetSettings(offline_after_s=15), clock=clock
    )
    fleet.apply(parse_snapshot(wire_snapshot("GONE")))
    clock.advance(60)
    fleet.apply(parse_snapshot(wire_snapshot("FINE")))
    low = wire_snapshot("LOW")
    low["battery"] = {**low["battery"], "percentage": 15.0}
    fleet.apply(parse_snapshot(low))
    empty = wire_snapshot("EMPTY")
    empty["battery"] = {**empty["battery"], "percentage": 7.0, "charging": True}
    fleet.apply(parse_snapshot(empty))
    sensor = wire_snapshot("SENSOR", sensors=_sensors(lidar="stale", camera="ok"))
    sensor["sensors"]["lidar"]["message"] = HOSTILE
    fleet.apply(parse_snapshot(sensor))
    fleet.apply(parse_snapshot(wire_snapshot("ESTOP", status="emergency_stop")))
    clock.advance(2)
    return fleet, clock


def test_rows_are_worst_first_with_reasons():
    fleet, _ = _fleet()
    view = build_view(fleet)
    order = [r.vehicle_id for r in view.rows]
    # Critical first (offline roster vehicles, e-stop, battery < 10 % even when charging), by battery then id.
    assert order == ["EMPTY", "ESTOP", "GONE", "NEVER", "LOW", "SENSOR", "FINE"]
    rows = {r.vehicle_id: r for r in view.rows}
    assert rows["GONE"].reasons == ("offline",) and rows["GONE"].heartbeat_age_s == pytest.approx(62)
    assert rows["NEVER"].heartbeat_age_s is None and rows["NEVER"].status == "offline"
    assert rows["LOW"].level_name == "warning" and rows["LOW"].reasons == ("battery 15 %",)
    assert rows["SENSOR"].reasons == ("lidar stale",)
    assert rows["FINE"].level_name == "ok" and rows["FINE"].reasons == ()
    assert view.online == 5


def test_offline_vehicle_keeps_its_last_position_but_is_judged_offline_only():
    fleet, _ = _fleet()
    gone = next(r for r in build_view(fleet).rows if r.vehicle_id == "GONE")
    assert (gone.latitude, gone.longitude) == (52.52, 13.405)
    assert gone.battery_pct == 76.5 and gone.level_name == "critical"


def test_json_view_has_no_infinity():
    fleet, _ = _fleet()
    body = json.dumps(build_view(fleet).to_json(), allow_nan=False)
    never = next(v for v in json.loads(body)["vehicles"] if v["vehicle_id"] == "NEVER")
    assert never["heartbeat_age_s"] is None and never["attention"] == "critical"


def test_html_escapes_vehicle_supplied_text():
    fleet, _ = _fleet()
    page = render(build_view(fleet))
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;&amp;amp;" in page
    assert '<meta http-equiv="refresh"' in page and 'name="viewport"' in page


@pytest.mark.parametrize(
    ("age", "text"),
    [(None, "never"), (3.7, "3 s ago"), (119, "119 s ago"), (600, "10 min ago"), (7500, "2 h 5 min ago")],
)
def test_format_age(age, text):
    assert format_age(age) == text


def _push_demo_fleet(url: str) -> None:
    for vid, fields in {
        "V1": {},
        "V2": {"battery": {"percentage": 8.0, "voltage": 21.0, "charging": False, "age_s": 0.3}},
        "V3": {"sensors": _sensors(lidar="error", camera="ok", imu="warn")},
    }.items():
        wire = wire_snapshot(vid, **fields)
        if vid == "V3":
            wire["sensors"]["lidar"]["message"] = HOSTILE
        assert push(url, wire).status == 200


def test_status_routes_over_http(tmp_path, write_config):
    config = write_config(auth_required=False, vehicles={"V1": {}, "V2": {}, "V3": {}, "V4": {}})
    with AggregatorProcess(config) as agg:
        _push_demo_fleet(agg.url)
        data = request(agg.url + "/api/v1/vehicles").json()
        assert [v["vehicle_id"] for v in data["vehicles"]] == ["V2", "V4", "V3", "V1"]
        assert data["vehicles_online"] == 3 and data["vehicles_total"] == 4
        page = request(agg.url + "/")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert b'id="vehicle-V4"' in page.body and b"<script" not in page.body


def _chromium(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*chromium_command(chromium, tmp_path / "chromium-profile"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.peer
def test_status_page_in_real_chromium_shows_hostile_text_as_text(tmp_path, write_config):
    chromium = require_binary("chromium")
    config = write_config(auth_required=False, vehicles={"V1": {}, "V2": {}, "V3": {}, "V4": {}})
    with AggregatorProcess(config) as agg:
        _push_demo_fleet(agg.url)
        dom = _chromium(chromium, tmp_path, "--window-size=1280,720", "--dump-dom", agg.url + "/")
        assert dom.returncode == 0, dom.stderr[-2000:]
        # The browser parsed the hostile message as text: no element was created from it, no script ran.
        assert "<title>Fleet status (3/4 online)</title>" in dom.stdout
        assert "pwned" not in dom.stdout.split("</title>")[0]
        assert "&lt;script&gt;" in dom.stdout and "<img" not in dom.stdout
        assert dom.stdout.index('id="vehicle-V2"') < dom.stdout.index('id="vehicle-V1"')


_LAYOUT = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, top: r.top, width: r.width}; };
  const rows = [...document.querySelectorAll("tbody tr")];
  return {
    header: getComputedStyle(document.querySelector("thead")).display,
    rows: rows.map(r => ({id: r.id, top: box(r).top, cells: [...r.querySelectorAll("td")].map(box)})),
    viewport: document.documentElement.clientWidth,
    content: document.documentElement.scrollWidth,
  };
})()"""
"""What the browser laid out: the header's display, each row's cells' boxes, the page's and the viewport's width."""


@pytest.mark.peer
@pytest.mark.parametrize(("device", "width", "height"), [("phone", 390, 844), ("desktop", 1280, 720)])
def test_status_page_layout_in_real_chromium(tmp_path, write_config, device, width, height):
    """A table with a header row on a desktop; on a phone, cards: no header, each row's cells stacked, and
    nothing wider than the screen."""
    chromium = require_binary("chromium")
    config = write_config(auth_required=False, vehicles={"V1": {}, "V2": {}, "V3": {}, "V4": {}})
    with AggregatorProcess(config) as agg:
        _push_demo_fleet(agg.url)
        with HeadlessChromium(chromium, tmp_path / "profile", agg.url + "/", width, height) as browser:
            layout = browser.evaluate(_LAYOUT)
        rows = layout["rows"]
        assert [r["id"] for r in rows] == ["vehicle-V2", "vehicle-V4", "vehicle-V3", "vehicle-V1"]
        assert [r["top"] for r in rows] == sorted(r["top"] for r in rows)  # worst first, top to bottom
        assert layout["content"] <= layout["viewport"], layout  # no sideways scrolling on either
        for row in rows:
            lefts = [c["left"] for c in row["cells"]]
            tops = [c["top"] for c in row["cells"]]
            assert len(lefts) >= 5, row
            if device == "phone":
                assert layout["header"] == "none"
                assert max(lefts) - min(lefts) < 1, row  # one column: the cells stacked
                assert tops == sorted(tops) and len(set(tops)) == len(tops), row
            else:
                assert layout["header"] != "none"
                assert max(tops) - min(tops) < 1, row  # one line: the cells side by side
                assert lefts == sorted(lefts) and len(set(lefts)) == len(lefts), row
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"status-page-{device}.png"
        shot.unlink(missing_ok=True)
        result = _chromium(chromium, tmp_path, f"--window-size={width},{height}", f"--screenshot={shot}", agg.url + "/")
        assert result.returncode == 0, result.stderr[-2000:]
        wait_for(lambda: shot.is_file() and shot.stat().st_size > 10_000, 10, what="a non-trivial screenshot")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_vehicles_view_of_its_link_shows_in_the_json_and_the_page():
    fleet, _ = _fleet()
    link = {
        "failed_attempts_total": 7,
        "outages_total": 2,
        "outage_seconds_total": 95.0,
        "rtt_s": 0.083,
        "last_outage": {"started_at": 1_800_000_000.0, "ended_at": None, "start_lat": 52.5, "start_lon": 13.4},
    }
    fleet.apply(parse_snapshot(wire_snapshot("FINE", seq=2, link=link)))
    view = build_view(fleet)
    rows = {r["vehicle_id"]: r for r in view.to_json()["vehicles"]}
    assert rows["GONE"]["link"] is None  # never reported (an older bridge)
    assert rows["FINE"]["link"] == {
        "failed_pushes_total": 7,
        "outages_total": 2,
        "outage_seconds_total": 95.0,
        "rtt_s": 0.083,
        "last_outage": {
            "started_at": 1_800_000_000.0,
            "ended_at": None,
            "start_lat": 52.5,
            "start_lon": 13.4,
            "end_lat": None,
            "end_lon": None,
        },
    }
    page = render(view)
    assert "RTT 83 ms · 2 outages (95 s), 7 failed pushes" in page
    assert "last outage: 2027-01-15 08:00:00 UTC at 52.50000, 13.40000 → ongoing" in page
