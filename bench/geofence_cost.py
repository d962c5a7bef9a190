"""Geofence cost per push: 50 zones of 200 vertices each, against the push's own in-process work (decode,
validation, fleet state) measured in the same run. The HTTP handling around that work is left out of the
push's cost, so the ratio printed is an upper bound of the geofence's share.

    .venv/bin/python bench/geofence_cost.py [PUSHES] [VEHICLES]

Two layouts: `scattered` (5 overlapping operating areas of 3 km radius and 45 keep-out zones of 150 m spread
over a 10 km square, the usual case: the grid and the boxes rule out most zones) and `stacked` (all 50 zones
around the same point, all applying to the vehicle, which is in every one of them: every zone is tested in
full, the worst case). Each with the vehicle inside an operating area (normal operation) and outside all of
them (a violation: the nearest area is then searched by distance).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from support import FakeClock, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator.collector import Exposition
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.geofence import GeofenceSettings, Zones, meters_per_degree, parse_zones
from tvm_observability.aggregator.geofence_monitor import GeofenceMonitor
from tvm_observability.aggregator.ingest import parse_snapshot

LON0, LAT0 = 11.0, 48.0
VERTICES = 200


def star(lon: float, lat: float, radius_m: float, rng: random.Random) -> list[list[float]]:
    kx, ky = meters_per_degree(lat)
    ring = []
    for i in range(VERTICES - 1):
        a = 2 * math.pi * i / (VERTICES - 1)
        r = radius_m * rng.uniform(0.8, 1.0)
        ring.append([lon + r * math.cos(a) / kx, lat + r * math.sin(a) / ky])
    return [*ring, ring[0]]


def zones_file(layout: str, rng: random.Random) -> dict[str, Any]:
    kx, ky = meters_per_degree(LAT0)
    features = []
    for i in range(50):
        kind = "operating_area" if i < 5 else "keep_out"
        if layout == "stacked":
            lon, lat, radius = LON0, LAT0, 500.0 + 20 * i
        else:
            lon, lat = LON0 + rng.uniform(-5000, 5000) / kx, LAT0 + rng.uniform(-5000, 5000) / ky
            radius = 3000.0 if kind == "operating_area" else 150.0
        geometry = {"type": "Polygon", "coordinates": [star(lon, lat, radius, rng)]}
        features.append({"type": "Feature", "properties": {"name": f"z{i}", "kind": kind}, "geometry": geometry})
    return {"type": "FeatureCollection", "features": features}


def per_call_us(fn: Callable[[int], object], count: int, repeat: int = 5) -> float:
    """Median over `repeat` runs of the CPU time per call of fn(0..count-1), in microseconds."""
    runs = []
    for _ in range(repeat):
        started = time.process_time()
        for i in range(count):
            fn(i)
        runs.append((time.process_time() - started) / count * 1e6)
    return statistics.median(runs)


def fixes(layout: str, zones: Zones, want_inside: bool, count: int, rng: random.Random) -> list[bytes]:
    """Push bodies of V1 at random fixes inside (or outside) every operating area of the layout."""
    kx, ky = meters_per_degree(LAT0)
    bodies: list[bytes] = []
    areas = [z for z in zones.zones if z.kind == "operating_area"]
    while len(bodies) < count:
        lon, lat = LON0 + rng.uniform(-8000, 8000) / kx, LAT0 + rng.uniform(-8000, 8000) / ky
        if any(z.contains(lon, lat) for z in areas) != want_inside:
            continue
        position = {"latitude": lat, "longitude": lon, "altitude": None, "fix": True, "age_s": 0.2}
        bodies.append(codec.encode_wire(wire_snapshot("V1", seq=len(bodies) + 1, position=position)))
    return bodies


def shapely_observe(zones: Zones) -> Callable[[float, float], object] | None:
    """The same decision with shapely (GEOS), when it is installed: an STRtree over prepared polygons, the
    point-in-polygon tests in C, and (outside every area) the distance to the nearest area's boundary on zones
    projected once to meters around the fleet. None without shapely (it is not a dependency)."""
    try:
        import shapely  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    kx, ky = meters_per_degree(LAT0)
    geoms = [shapely.Polygon(*[list(zip(r[0], r[1], strict=True)) for r in zone.rings()][:1]) for zone in zones.zones]
    metric = [shapely.transform(g, lambda xy: (xy - (LON0, LAT0)) * (kx, ky)) for g in geoms]
    boundaries = [m.boundary for m in metric]
    shapely.prepare(geoms)
    tree = shapely.STRtree(geoms)
    areas = [i for i, z in enumerate(zones.zones) if z.kind == "operating_area"]
    kinds = [z.kind for z in zones.zones]

    def observe(lon: float, lat: float) -> object:
        point = shapely.Point(lon, lat)
        local = [i for i in tree.query(point) if shapely.contains_xy(geoms[i], lon, lat)]
        keep_out = [i for i in local if kinds[i] == "keep_out"]
        if any(kinds[i] == "operating_area" for i in local):
            return keep_out
        here = shapely.Point((lon - LON0) * kx, (lat - LAT0) * ky)
        return keep_out, min(shapely.distance(boundaries[i], here) for i in areas)

    return observe


def main(pushes: int) -> None:
    rng = random.Random(15)
    clock = FakeClock()
    now = clock.monotonic()
    layouts = {layout: parse_zones(zones_file(layout, rng)) for layout in ("scattered", "stacked")}
    bodies = fixes("scattered", layouts["scattered"], True, pushes, rng)
    fleet = FleetState(("V1",), FleetSettings(), clock=clock)

    def push(i: int) -> None:
        if i == 0:
            fleet.reconfigure((), FleetSettings())
            fleet.reconfigure(("V1",), FleetSettings())
        fleet.apply(parse_snapshot(codec.decode(bodies[i])), bodies[i])

    push_us = per_call_us(push, pushes)
    print(f"push (decode, validate, fleet state): {push_us:.1f} µs")
    for layout, zones in layouts.items():
        for inside in (True, False):
            snapshots = [parse_snapshot(codec.decode(b)) for b in fixes(layout, zones, inside, pushes, rng)]
            monitor = GeofenceMonitor(zones, GeofenceSettings())
            observe_us = per_call_us(lambda i, m=monitor, s=snapshots: m.observe(s[i], now), pushes)
            where = "inside its area" if inside else "outside its areas"
            print(
                f"geofence, {layout}, vehicle {where}: {observe_us:.1f} µs per push = "
                f"{observe_us / push_us:.2f}× the push's own work"
            )
            with_shapely = shapely_observe(zones)
            if with_shapely is not None:
                points = [(p.longitude, p.latitude) for p in (s.position for s in snapshots) if p is not None]
                shapely_us = per_call_us(lambda i, f=with_shapely, xy=points: f(*xy[i]), pushes)
                print(f"  the same with shapely: {shapely_us:.1f} µs per push = {shapely_us / push_us:.2f}×")


def scrape_cost(vehicles: int) -> None:
    """CPU of one /metrics render for `vehicles` vehicles with a fix each, without and with geofences (the
    scattered zones), median of 3 after a warm-up render (the text caches filled, as between two scrapes)."""
    rng = random.Random(16)
    zones = parse_zones(zones_file("scattered", rng))
    clock = FakeClock()
    ids = [f"V{i}" for i in range(vehicles)]
    fleet = FleetState(ids, FleetSettings(), clock=clock)
    monitor = GeofenceMonitor(zones, GeofenceSettings(max_fix_age_s=1e9))
    for vid, body in zip(ids, fixes("scattered", zones, True, vehicles, rng), strict=True):
        wire = codec.decode(body)
        wire["vehicle_id"] = vid
        snapshot = parse_snapshot(wire)
        fleet.apply(snapshot)
        monitor.observe(snapshot, clock.monotonic())
    plain, fenced = Exposition(fleet), Exposition(fleet, monitor)
    plain_ms, fenced_ms = (per_call_us(lambda _, e=e: e.render(""), 1, repeat=3) / 1000 for e in (plain, fenced))
    print(f"scrape of {vehicles:,} vehicles: {plain_ms:.0f} ms without geofences, {fenced_ms:.0f} ms with")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    scrape_cost(int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
