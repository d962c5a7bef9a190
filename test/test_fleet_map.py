"""The fleet map on the status page, /api/v1/zones and the geofence in /api/v1/vehicles; the map in a real
headless Chromium at phone width and with 1,000 vehicles (screenshots in test-artifacts/)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from peers import HeadlessChromium, chromium_command, require_binary
from support import REPO, AggregatorProcess, push, request, wait_for
from test_geofence import AREA, KEEP_OUT, LAT0, LON0, collection
from test_geofence_service import at, write_zones

from tvm_observability.aggregator.fleet_map import render_map
from tvm_observability.aggregator.fleet_view import VehicleRow
from tvm_observability.aggregator.geofence import parse_zones
from tvm_observability.auth import hash_token

ARTIFACTS = REPO / "test-artifacts"


def config(tmp_path: Path, vehicles: list[str], **extra: Any) -> Path:
    zones = write_zones(tmp_path / "zones.geojson", AREA, KEEP_OUT)
    data = {
        "listen": "127.0.0.1:0",
        "auth_required": False,
        "environment": "test",
        "vehicles": {vid: {} for vid in vehicles},
        "geofences": {"file": str(zones)},
        **extra,
    }
    path = tmp_path / "aggregator.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    return path


def place(url: str, vehicle: str, meters_east: float, meters_north: float = 0.0, seq: int = 1) -> None:
    wire = at(meters_east, seq)
    wire["vehicle_id"] = vehicle
    wire["position"]["latitude"] = LAT0 + meters_north / 111_200.0
    assert push(url, wire).status == 200


def test_zones_api_vehicle_geofence_and_the_map(tmp_path: Path) -> None:
    with AggregatorProcess(config(tmp_path, ["V1", "V2", "V3", "V4"])) as agg:
        place(agg.url, "V1", 0)
        place(agg.url, "V2", -300)  # in the pond
        place(agg.url, "V3", 700)  # outside the campus
        zones = request(agg.url + "/api/v1/zones")
        assert zones.status == 200 and zones.headers["content-type"].startswith("application/geo+json")
        assert zones.json() == collection(AREA, KEEP_OUT)
        vehicles = {v["vehicle_id"]: v for v in request(agg.url + "/api/v1/vehicles").json()["vehicles"]}
        assert vehicles["V1"]["geofence"] == {"status": "inside", "violation": None}
        assert vehicles["V2"]["geofence"] == {
            "status": "in_keep_out",
            "violation": {"zone": "pond", "kind": "keep_out"},
        }
        assert vehicles["V2"]["attention"] == "critical" and vehicles["V2"]["reasons"][0] == "in keep-out zone pond"
        assert vehicles["V3"]["geofence"]["status"] == "outside_operating_area"
        assert vehicles["V4"]["geofence"] == {"status": "unknown", "violation": None}  # never heard from
        page = request(agg.url + "/").body.decode()
        assert page.count('<path class="operating_area"') == 1 and page.count('<path class="keep_out"') == 1
        assert 'id="map-V2"' in page and "v critical fence" in page
        assert "<script" not in page


def test_the_map_escapes_every_name() -> None:
    """Zone names are label-safe by validation and vehicle ids by the protocol; the map escapes them anyway."""
    row = VehicleRow(
        vehicle_id='V1"><script>alert(1)</script>',
        status="idle",
        online=False,
        on_roster=True,
        heartbeat_age_s=90.0,
        battery_pct=None,
        charging=None,
        latitude=LAT0,
        longitude=LON0,
        sensors=(),
        errors_total=0,
        errors={},
        level=0,
        reasons=("offline", "<b>"),
        geofence="unknown",
    )
    html = render_map(parse_zones(collection(AREA)), [row])
    assert "<script" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;" in html and "(old)" in html


def test_zones_are_behind_read_auth(tmp_path: Path) -> None:
    token = "read-token-" + "r" * 30
    with AggregatorProcess(config(tmp_path, ["V1"], read_auth={"bearer_token_sha256": hash_token(token)})) as agg:
        assert request(agg.url + "/api/v1/zones").status == 401
        ok = request(agg.url + "/api/v1/zones", headers={"Authorization": f"Bearer {token}"})
        assert ok.status == 200 and len(ok.json()["features"]) == 2


_MAP = """(() => {
  const svg = document.querySelector("svg.map");
  const r = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll("g.v circle")].map(c => c.getBoundingClientRect());
  return {
    width: r.width, height: r.height, left: r.left,
    viewport: document.documentElement.clientWidth, content: document.documentElement.scrollWidth,
    markers: marks.length, inside: marks.filter(m => m.left >= r.left - 1 && m.right <= r.right + 1).length,
    old: svg.querySelectorAll("g.v.old").length, labels: svg.querySelectorAll("text.id").length,
    zones: svg.querySelectorAll("path").length,
  };
})()"""


@pytest.mark.peer
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("case", "count", "width", "height"), [("phone", 12, 390, 844), ("fleet-1000", 1000, 1280, 900)]
)
def test_the_map_in_real_chromium(tmp_path: Path, case: str, count: int, width: int, height: int) -> None:
    """The map fits the screen (no sideways scrolling), draws every vehicle inside it, marks the offline one as
    old, and keeps ids readable: labels up to 60 vehicles, tooltips beyond."""
    chromium = require_binary("chromium")
    ids = [f"V{i:04d}" for i in range(count)]
    with AggregatorProcess(config(tmp_path, [*ids, "GONE"])) as agg:
        place(agg.url, "GONE", 100, 100)
        for i, vid in enumerate(ids):  # a spiral over the campus, a few in the pond and outside
            angle, radius = i * 2.4, 30 + 600 * math.sqrt(i / count)
            place(agg.url, vid, radius * math.cos(angle), radius * math.sin(angle))
        with HeadlessChromium(chromium, tmp_path / "profile", agg.url + "/", width, height) as browser:
            drawn = browser.evaluate(_MAP)
        assert drawn["markers"] == count + 1 and drawn["inside"] == count + 1, drawn
        assert drawn["zones"] == 2
        assert drawn["content"] <= drawn["viewport"], drawn  # no sideways scrolling
        assert 0 < drawn["width"] <= drawn["viewport"] and drawn["height"] > 200, drawn
        assert drawn["labels"] == (count + 1 if count + 1 <= 60 else 0)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"fleet-map-{case}.png"
        shot.unlink(missing_ok=True)
        command = [
            *chromium_command(chromium, tmp_path / "shot-profile"),
            f"--window-size={width},{height}",
            f"--screenshot={shot}",
            agg.url + "/",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        wait_for(lambda: shot.is_file() and shot.stat().st_size > 10_000, 10, what="a non-trivial screenshot")


def test_an_offline_vehicle_is_drawn_old_at_its_last_position(tmp_path: Path) -> None:
    with AggregatorProcess(config(tmp_path, ["V1"], offline_after_s=0.5)) as agg:
        place(agg.url, "V1", -300)  # in the pond, then silent

        def drawn_offline() -> str | None:
            text = request(agg.url + "/").body.decode()
            return text if "v critical old fence" in text else None

        page = wait_for(drawn_offline, 20, what="V1 drawn offline")
        vehicles = request(agg.url + "/api/v1/vehicles").json()["vehicles"]
    assert "V1 (old)" in page
    assert vehicles[0]["reasons"] == ["offline", "last seen in keep-out zone pond"]
    assert vehicles[0]["geofence"]["violation"] == {"zone": "pond", "kind": "keep_out"}
