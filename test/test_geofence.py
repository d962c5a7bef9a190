"""Geofence zones and their evaluation (aggregator/geofence.py): validation, meters, hysteresis. Pure."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import wire_snapshot

from tvm_observability.aggregator.geofence import (
    IN_KEEP_OUT,
    INSIDE,
    OUTSIDE_OPERATING_AREA,
    GeofenceSettings,
    Verdict,
    Zones,
    ZonesError,
    area_distance,
    evaluate,
    meters_per_degree,
    parse_zones,
    parse_zones_text,
)
from tvm_observability.aggregator.geofence_monitor import GeofenceMonitor
from tvm_observability.aggregator.ingest import parse_snapshot

LON0, LAT0 = 11.0, 48.0
"""Around Munich: longitude and latitude are both plausible the other way round, as in many real fleets."""


def square(center_lon: float, center_lat: float, half_m: float) -> list[list[float]]:
    kx, ky = meters_per_degree(center_lat)
    dx, dy = half_m / kx, half_m / ky
    return [
        [center_lon - dx, center_lat - dy],
        [center_lon + dx, center_lat - dy],
        [center_lon + dx, center_lat + dy],
        [center_lon - dx, center_lat + dy],
        [center_lon - dx, center_lat - dy],
    ]


def feature(name: str, kind: str, rings: list[list[list[float]]], **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"name": name, "kind": kind, **props},
        "geometry": {"type": "Polygon", "coordinates": rings},
    }


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def east(meters: float, lat: float = LAT0) -> float:
    """Degrees of longitude for `meters` east at `lat`."""
    return meters / meters_per_degree(lat)[0]


AREA = feature("campus", "operating_area", [square(LON0, LAT0, 500.0), square(LON0 + east(300), LAT0, 50.0)])
"""A 1 km square with a 100 m hole 300 m east of its centre."""
KEEP_OUT = feature("pond", "keep_out", [square(LON0 - east(300), LAT0, 50.0)])
ZONES = parse_zones(collection(AREA, KEEP_OUT))


def distance_at(zones: Zones, meters_east: float, vehicle: str = "V1") -> float | None:
    lon = LON0 + east(meters_east)
    return area_distance(zones.applicable(vehicle)[0], lon, LAT0, meters_per_degree(LAT0))[0]


def status_at(zones: Zones, meters_east: float, vehicle: str = "V1", **kwargs: Any) -> Verdict:
    return evaluate(zones, vehicle, LON0 + east(meters_east), LAT0, margin_m=kwargs.pop("margin_m", 5.0), **kwargs)


def test_inside_outside_hole_and_keep_out() -> None:
    assert status_at(ZONES, 0).status == INSIDE
    assert status_at(ZONES, 300).status == OUTSIDE_OPERATING_AREA  # in the hole
    assert status_at(ZONES, 600).status == OUTSIDE_OPERATING_AREA
    verdict = status_at(ZONES, -300)
    assert (verdict.status, verdict.zone) == (IN_KEEP_OUT, "pond")
    assert status_at(ZONES, 600).zone == "campus"


def test_signed_distance_in_meters() -> None:
    assert distance_at(ZONES, 0) == pytest.approx(250.0, abs=0.01)  # the hole is nearest
    assert distance_at(ZONES, -100) == pytest.approx(350.0, abs=0.01)
    assert distance_at(ZONES, 600) == pytest.approx(-100.0, abs=0.01)
    assert distance_at(ZONES, 300) == pytest.approx(-50.0, abs=0.01)


def test_meters_per_degree_matches_the_wgs84_figures() -> None:
    assert meters_per_degree(0.0)[1] == pytest.approx(110_574, abs=1)
    assert meters_per_degree(0.0)[0] == pytest.approx(111_320, abs=1)
    assert meters_per_degree(60.0)[0] == pytest.approx(55_800, abs=5)


def test_zones_apply_to_listed_vehicles_and_globs() -> None:
    zones = parse_zones(
        collection(
            feature("north", "operating_area", [square(LON0, LAT0, 100.0)], vehicles=["V1", "shuttle-*"]),
            feature("works", "keep_out", [square(LON0, LAT0, 10.0)], vehicles=["shuttle-?"]),
        )
    )
    assert status_at(zones, 500, "V2").status == INSIDE  # no zone applies to V2
    assert status_at(zones, 500, "V1").status == OUTSIDE_OPERATING_AREA
    assert status_at(zones, 0, "shuttle-7").status == IN_KEEP_OUT
    assert status_at(zones, 0, "shuttle-17").status == INSIDE
    assert distance_at(zones, 0, "V2") is None


def test_multipolygon_inside_either_part() -> None:
    multi = {
        "type": "Feature",
        "properties": {"name": "two-sites", "kind": "operating_area"},
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [[square(LON0, LAT0, 50.0)], [square(LON0 + east(1000), LAT0, 50.0)]],
        },
    }
    zones = parse_zones(collection(multi))
    assert status_at(zones, 0).status == INSIDE
    assert status_at(zones, 1000).status == INSIDE
    assert status_at(zones, 500).status == OUTSIDE_OPERATING_AREA
    assert distance_at(zones, 500) == pytest.approx(-450.0, abs=0.01)


def test_every_problem_reported_at_once() -> None:
    bowtie = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    unclosed = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    bad = collection(
        feature("a", "operating_area", [bowtie]),
        feature("b", "operating_area", [unclosed]),
        feature("c", "parking", [square(LON0, LAT0, 10)]),
        feature("c", "keep_out", [square(LON0, LAT0, 10)]),
        feature("c", "keep_out", [square(LON0, LAT0, 10)]),
        feature('bad"name', "keep_out", [square(LON0, LAT0, 10)]),
        feature("nan", "keep_out", [[[0.0, 0.0], [1.0, 0.0], [float("nan"), 1.0], [0.0, 0.0]]]),
        feature("swapped", "keep_out", [[[48.0, 11.0], [48.0, 181.0], [49.0, 11.0], [48.0, 11.0]]]),
        feature("globs", "keep_out", [square(LON0, LAT0, 10)], vehicles=["V 1"]),
        {"type": "Feature", "properties": {"name": "line", "kind": "keep_out"}, "geometry": {"type": "LineString"}},
    )
    with pytest.raises(ZonesError) as caught:
        parse_zones(bad)
    text = "\n".join(caught.value.problems)
    assert "features[0] (a).geometry.coordinates[0]: ring intersects itself" in text
    assert "features[1] (b).geometry.coordinates[0]: ring not closed" in text
    assert "features[2] (c).properties.kind: must be one of operating_area, keep_out, got 'parking'" in text
    assert "features[4]: name 'c' already used by features[3]" in text
    assert "features[5].properties.name: must match" in text
    assert "features[6] (nan).geometry.coordinates[0]: bad positions: [2] must be finite numbers" in text
    assert "latitude 181.0 outside -90..90 (is the file in [latitude, longitude] order?" in text
    assert "features[8] (globs).properties.vehicles" in text
    assert "features[9] (line).geometry.type: must be Polygon or MultiPolygon" in text
    assert len(caught.value.problems) == 9


def test_fold_back_and_touching_rings_refused_convex_corners_accepted() -> None:
    fold = [[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(ZonesError, match="intersects itself"):
        parse_zones(collection(feature("f", "keep_out", [fold])))
    parse_zones(collection(feature("ok", "keep_out", [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])))


def test_zones_text_is_json_without_nan_constants() -> None:
    assert [z.name for z in parse_zones_text(json.dumps(collection(AREA, KEEP_OUT))).zones] == ["campus", "pond"]
    with pytest.raises(ZonesError, match="not valid JSON: NaN is not a JSON number"):
        parse_zones_text('{"type": "FeatureCollection", "features": [NaN]}')


def test_swapped_file_in_range_is_caught_by_the_fleet_positions() -> None:
    """[lat, lon] swapped around Munich stays within range, so only the positions can tell: the first vehicle
    judged thousands of km outside the area raises one warning for it."""
    ring = square(LON0, LAT0, 500.0)
    swapped = parse_zones(collection(feature("campus", "operating_area", [[[lat, lon] for lon, lat in ring]])))
    monitor = GeofenceMonitor(swapped, GeofenceSettings())
    first = monitor.observe(parse_snapshot(wire_snapshot("V1", position=fix_wire(LON0, LAT0))), 1000.0)
    assert [(w.zone, w.vehicle_id) for w in first] == [("campus", "V1")] and first[0].distance_m > 1e6
    assert monitor.observe(parse_snapshot(wire_snapshot("V2", position=fix_wire(LON0, LAT0))), 1000.0) == []
    right = GeofenceMonitor(ZONES, GeofenceSettings())
    assert right.observe(parse_snapshot(wire_snapshot("V1", position=fix_wire(LON0 + east(700), LAT0))), 1000.0) == []


def fix_wire(lon: float, lat: float) -> dict[str, Any]:
    return {"latitude": lat, "longitude": lon, "altitude": None, "fix": True, "age_s": 0.2}


@st.composite
def star_ring(draw: st.DrawFn) -> list[list[float]]:
    """A simple (star-shaped) ring around (LON0, LAT0), counter-clockwise, 3 to 40 vertices, 20-2000 m."""
    count = draw(st.integers(3, 40))
    angles = sorted(draw(st.lists(st.floats(0, 2 * math.pi, exclude_max=True), min_size=count, max_size=count)))
    if len({round(a, 6) for a in angles}) < len(angles) or max(b - a for a, b in itertools.pairwise(angles)) > 3:
        angles = [2 * math.pi * i / count for i in range(count)]
    radii = draw(st.lists(st.floats(20, 2000), min_size=count, max_size=count))
    kx, ky = meters_per_degree(LAT0)
    ring = [[LON0 + r * math.cos(a) / kx, LAT0 + r * math.sin(a) / ky] for a, r in zip(angles, radii, strict=True)]
    return [*ring, ring[0]]


@settings(max_examples=60, deadline=None)
@given(
    ring=star_ring(),
    points=st.lists(st.tuples(st.floats(-2500, 2500), st.floats(-2500, 2500)), min_size=1, max_size=20),
    kind=st.sampled_from(["operating_area", "keep_out"]),
)
def test_winding_order_does_not_matter(ring: list[list[float]], points: list[tuple[float, float]], kind: str) -> None:
    try:
        forward = parse_zones(collection(feature("z", kind, [ring])))
    except ZonesError:
        return  # a star with near-collinear spikes may touch itself: refused either way
    backward = parse_zones(collection(feature("z", kind, [ring[::-1]])))
    kx, ky = meters_per_degree(LAT0)
    for x, y in points:
        lon, lat = LON0 + x / kx, LAT0 + y / ky
        a = evaluate(forward, "V1", lon, lat, margin_m=3.0)
        b = evaluate(backward, "V1", lon, lat, margin_m=3.0)
        assert a.status == b.status
        scale = meters_per_degree(lat)
        there, back = (
            area_distance(forward.zones, lon, lat, scale)[0],
            area_distance(backward.zones, lon, lat, scale)[0],
        )
        assert there == pytest.approx(back)


@settings(max_examples=100, deadline=None)
@given(
    margin=st.floats(1.0, 20.0),
    accuracy=st.one_of(st.none(), st.floats(0.0, 10.0)),
    centre=st.floats(-30.0, 30.0),
    jitter=st.lists(st.floats(-0.45, 0.45), min_size=2, max_size=60),
    boundary=st.sampled_from(["area", "keep_out"]),
)
def test_jitter_within_the_margin_never_flaps(
    margin: float, accuracy: float | None, centre: float, jitter: list[float], boundary: str
) -> None:
    """Fixes anywhere around a boundary, jittering by less than the margin: the status changes at most once."""
    zones = parse_zones(collection(AREA)) if boundary == "area" else parse_zones(collection(KEEP_OUT))
    edge = 500.0 if boundary == "area" else -250.0  # the area's east edge, the pond's east edge
    previous: Verdict | None = None
    changes = 0
    for j in jitter:
        verdict = status_at(zones, edge + centre + j * margin, margin_m=margin, accuracy_m=accuracy, previous=previous)
        if previous is not None and verdict.status != previous.status:
            changes += 1
        previous = verdict
    assert changes <= 1


def test_hysteresis_enters_at_accuracy_and_leaves_past_the_margin() -> None:
    zones = parse_zones(collection(AREA))
    v = status_at(zones, 502, margin_m=5.0, accuracy_m=3.0)
    assert v.status == INSIDE  # 2 m out, but the fix is only good to 3 m
    v = status_at(zones, 504, margin_m=5.0, accuracy_m=3.0, previous=v)
    assert v.status == OUTSIDE_OPERATING_AREA
    v = status_at(zones, 497, margin_m=5.0, accuracy_m=3.0, previous=v)
    assert v.status == OUTSIDE_OPERATING_AREA  # 3 m back in: within margin + accuracy
    v = status_at(zones, 491, margin_m=5.0, accuracy_m=3.0, previous=v)
    assert v.status == INSIDE


@settings(max_examples=60, deadline=None)
@given(
    centres=st.lists(st.tuples(st.floats(-3000, 3000), st.floats(-3000, 3000)), min_size=1, max_size=8),
    point=st.tuples(st.floats(-4000, 4000), st.floats(-4000, 4000)),
)
def test_bounding_box_prefilter_finds_the_nearest_area(
    centres: list[tuple[float, float]], point: tuple[float, float]
) -> None:
    kx, ky = meters_per_degree(LAT0)
    features = [
        feature(f"a{i}", "operating_area", [square(LON0 + x / kx, LAT0 + y / ky, 100.0)])
        for i, (x, y) in enumerate(centres)
    ]
    zones = parse_zones(collection(*features))
    lon, lat = LON0 + point[0] / kx, LAT0 + point[1] / ky
    scale = meters_per_degree(lat)
    brute = max(z.signed_distance_m(lon, lat, scale) for z in zones.zones)
    assert area_distance(zones.zones, lon, lat, scale)[0] == pytest.approx(brute)
