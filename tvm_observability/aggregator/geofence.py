"""Geofences: a GeoJSON zones file, validated, and the evaluation of a vehicle's fix against it. Pure, no I/O
(config.py reads the file).

Zones (RFC 7946): a FeatureCollection of Polygon or MultiPolygon features, positions `[longitude, latitude]`,
holes allowed, either ring winding accepted (inside is decided by the even-odd rule, which ignores winding).
Feature properties: `name` (label-safe, unique), `kind` (`operating_area` or `keep_out`), optional `vehicles`
(vehicle ids or glob patterns; absent: every vehicle). A vehicle with at least one applicable operating area
must be inside one of them; it must never be inside an applicable keep-out zone.

Distances are in meters on a local projection around the vehicle's fix: edges are the straight lines RFC 7946
draws in longitude/latitude, scaled to meters with the WGS84 ellipsoid's meridional and prime-vertical radii at
the fix's latitude. At the fleet's scale (a boundary within a few kilometres) this is within ~0.3 m of the
geodesic distance at 1 km and latitudes up to 60 degrees (the error grows as distance² · tan(latitude) / R),
and within millimetres at the hysteresis margin's few meters, where decisions are made.

Hysteresis: a violation starts when the fix is outside an operating area (or inside a keep-out zone) by more
than the fix's accuracy, and ends only once it is back by more than `margin_m` plus that accuracy: jitter
narrower than the margin cannot flap the status.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..model import NAME_PATTERN

OPERATING_AREA = "operating_area"
KEEP_OUT = "keep_out"
ZONE_KINDS: tuple[str, ...] = (OPERATING_AREA, KEEP_OUT)

INSIDE = "inside"
OUTSIDE_OPERATING_AREA = "outside_operating_area"
IN_KEEP_OUT = "in_keep_out"
UNKNOWN = "unknown"
GEOFENCE_STATUSES: tuple[str, ...] = (INSIDE, OUTSIDE_OPERATING_AREA, IN_KEEP_OUT, UNKNOWN)
"""Every value of `vehicle_geofence_status`'s status label; `inside` also means "no zone applies"."""

VEHICLE_PATTERN = re.compile(r"[A-Za-z0-9_.*?!\[\]-]{1,64}")
"""What a `vehicles` entry may be: a vehicle id, or an fnmatch glob over vehicle ids."""

MAX_ZONES = 1000
MAX_VERTICES = 100_000
"""Bounds on one zones file (all rings together), so a huge file fails at load instead of slowing every push."""

_A = 6378137.0  # WGS84 semi-major axis, m
_E2 = 6.69437999014e-3  # WGS84 first eccentricity squared


class ZonesError(ValueError):
    """The zones file is unusable; `problems` names each one (the config reports them under its key)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, slots=True)
class GeofenceSettings:
    """How fixes are judged; these are the defaults of the config's `geofences` section."""

    margin_m: float = 5.0
    """Hysteresis: a violation ends only once the fix is this far (plus its accuracy) back on the right side."""
    max_fix_age_s: float = 10.0
    """A fix older than this (its age on the vehicle plus the time since the push) gives `unknown`."""
    max_accuracy_m: float = 50.0
    """A fix whose reported horizontal accuracy is worse than this gives `unknown`."""


Ring = tuple[tuple[float, ...], tuple[float, ...]]
"""A closed ring as (longitudes, latitudes), the closing position repeated last."""
Chunk = tuple[float, float, float, float, tuple[float, ...], tuple[float, ...]]
"""A run of consecutive edges of one ring: its box (min lon, min lat, max lon, max lat), its vertices."""


def _chunked(rings: Iterable[Ring]) -> Iterator[Chunk]:
    for lons, lats in rings:
        size = max(4, math.isqrt(len(lons)))
        for start in range(0, len(lons) - 1, size):
            run_lons, run_lats = lons[start : start + size + 1], lats[start : start + size + 1]
            yield min(run_lons), min(run_lats), max(run_lons), max(run_lats), run_lons, run_lats


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    kind: str
    vehicles: tuple[str, ...]
    """Vehicle ids or glob patterns; empty: every vehicle."""
    polygons: tuple[tuple[Ring, ...], ...]
    """Each polygon's rings, outer first (holes after)."""
    bbox: tuple[float, float, float, float]
    """(min longitude, min latitude, max longitude, max latitude)."""
    feature: Mapping[str, Any] = field(compare=False, repr=False)
    """The feature as the file gave it (for /api/v1/zones and the maps)."""
    chunks: tuple[Chunk, ...] = field(compare=False, repr=False)
    """The rings' edges in runs of about √n with a box each: the index of `contains` and the distances."""

    def applies_to(self, vehicle_id: str) -> bool:
        return not self.vehicles or any(fnmatch.fnmatchcase(vehicle_id, p) for p in self.vehicles)

    def rings(self) -> Iterator[Ring]:
        for polygon in self.polygons:
            yield from polygon

    def contains(self, lon: float, lat: float) -> bool:
        """Even-odd point-in-polygon over every ring (holes excluded, winding irrelevant): a ray east of the
        point, tested only against the runs of edges whose box it can cross."""
        min_lon, min_lat, max_lon, max_lat = self.bbox
        if not (min_lon <= lon <= max_lon and min_lat <= lat <= max_lat):
            return False
        inside = False
        for _, c_min_lat, c_max_lon, c_max_lat, lons, lats in self.chunks:
            if c_max_lat < lat or c_min_lat > lat or c_max_lon < lon:
                continue
            x1, y1 = lons[0], lats[0]
            for i in range(1, len(lons)):
                x2, y2 = lons[i], lats[i]
                if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
                    inside = not inside
                x1, y1 = x2, y2
        return inside

    def boundary_distance_m(self, lon: float, lat: float, scale: tuple[float, float]) -> float:
        """Meters from (lon, lat) to the nearest edge of any ring, with `scale` (meters per degree) from
        `meters_per_degree(lat)`: runs of edges nearest box first, until a box is farther than the best edge."""
        kx, ky = scale
        boxes = []
        for index, (c_min_lon, c_min_lat, c_max_lon, c_max_lat, _, _) in enumerate(self.chunks):
            dx = (c_min_lon - lon if lon < c_min_lon else lon - c_max_lon if lon > c_max_lon else 0.0) * kx
            dy = (c_min_lat - lat if lat < c_min_lat else lat - c_max_lat if lat > c_max_lat else 0.0) * ky
            boxes.append((dx * dx + dy * dy, index))
        boxes.sort()
        chunks = self.chunks
        best = math.inf
        for box, index in boxes:
            if box >= best:
                break
            lons, lats = chunks[index][4], chunks[index][5]
            ax, ay = (lons[0] - lon) * kx, (lats[0] - lat) * ky
            for i in range(1, len(lons)):
                bx, by = (lons[i] - lon) * kx, (lats[i] - lat) * ky
                dx, dy = bx - ax, by - ay
                dot = -(ax * dx + ay * dy)  # where the point projects onto the edge, times its length²
                if dot <= 0.0:
                    d2 = ax * ax + ay * ay
                else:
                    length2 = dx * dx + dy * dy
                    if dot >= length2:
                        d2 = bx * bx + by * by
                    else:
                        t = dot / length2
                        px, py = ax + t * dx, ay + t * dy
                        d2 = px * px + py * py
                if d2 < best:  # noqa: PLR1730 (min() is a call per edge: the hot loop)
                    best = d2
                ax, ay = bx, by
        return math.sqrt(best)

    def signed_distance_m(self, lon: float, lat: float, scale: tuple[float, float]) -> float:
        """Meters to the boundary, positive inside the zone, negative outside."""
        distance = self.boundary_distance_m(lon, lat, scale)
        return distance if self.contains(lon, lat) else -distance

    def bbox_distance_m(self, lon: float, lat: float, scale: tuple[float, float]) -> float:
        """A lower bound of the distance to the zone: meters to its bounding box (0 inside it)."""
        min_lon, min_lat, max_lon, max_lat = self.bbox
        dx = (min_lon - lon if lon < min_lon else lon - max_lon if lon > max_lon else 0.0) * scale[0]
        dy = (min_lat - lat if lat < min_lat else lat - max_lat if lat > max_lat else 0.0) * scale[1]
        return math.sqrt(dx * dx + dy * dy)

    def near(self, lon: float, lat: float, band_lon: float, band_lat: float) -> bool:
        """Whether (lon, lat) is within the bounding box widened by the given degrees (the cheapest test)."""
        min_lon, min_lat, max_lon, max_lat = self.bbox
        return min_lon - band_lon <= lon <= max_lon + band_lon and min_lat - band_lat <= lat <= max_lat + band_lat


def meters_per_degree(latitude: float) -> tuple[float, float]:
    """(east, north) meters per degree of longitude and latitude at `latitude`, on the WGS84 ellipsoid."""
    phi = math.radians(latitude)
    w = 1.0 - _E2 * math.sin(phi) ** 2
    meridional = _A * (1.0 - _E2) / w**1.5
    prime_vertical = _A / math.sqrt(w)
    rad = math.pi / 180.0
    return prime_vertical * math.cos(phi) * rad, meridional * rad


# -- parsing -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Zones:
    """A validated zones file with a grid index of the zones' boxes; what applies to a vehicle is memoised per
    vehicle id (a roster's worth of entries)."""

    zones: tuple[Zone, ...] = ()
    source: str = "<none>"
    _grid: Grid = field(default_factory=lambda: Grid(()), compare=False, repr=False)
    _by_vehicle: dict[str, Applicable] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, zones: tuple[Zone, ...], source: str) -> Zones:
        return cls(zones, source, Grid(zones))

    def applicable(self, vehicle_id: str) -> Applicable:
        """The operating areas and keep-out zones that apply to the vehicle."""
        found = self._by_vehicle.get(vehicle_id)
        if found is None:
            mine = [(i, z) for i, z in enumerate(self.zones) if z.applies_to(vehicle_id)]
            found = Applicable(
                tuple(z for _, z in mine if z.kind == OPERATING_AREA),
                tuple(z for _, z in mine if z.kind == KEEP_OUT),
                frozenset(i for i, _ in mine),
            )
            if len(self._by_vehicle) < 100_000:
                self._by_vehicle[vehicle_id] = found
        return found

    def around(self, lon: float, lat: float, mine: frozenset[int]) -> list[Zone]:
        """The zones among `mine` (indices) whose box may hold (lon, lat): a grid lookup, not a scan."""
        return [self.zones[i] for i in self._grid.candidates(lon, lat) if i in mine]

    def count(self, kind: str) -> int:
        return sum(1 for z in self.zones if z.kind == kind)

    def to_geojson(self) -> dict[str, Any]:
        """The zones as a FeatureCollection, each feature as the file gave it."""
        return {"type": "FeatureCollection", "features": [dict(z.feature) for z in self.zones]}


class Applicable(NamedTuple):
    areas: tuple[Zone, ...]
    keep_outs: tuple[Zone, ...]
    indices: frozenset[int]


GRID_SIDE = 64
"""Cells per side of the grid over all zones' boxes."""
GRID_MAX_CELLS = 256
"""A zone whose box covers more cells is kept in a list checked for every fix instead (a big operating area)."""


class Grid:
    """Zone indices by the grid cells their boxes overlap."""

    def __init__(self, zones: Sequence[Zone]) -> None:
        self.cells: dict[tuple[int, int], list[int]] = {}
        self.wide: list[int] = []
        if not zones:
            self.lon0 = self.lat0 = 0.0
            self.step_lon = self.step_lat = 1.0
            return
        self.lon0 = min(z.bbox[0] for z in zones)
        self.lat0 = min(z.bbox[1] for z in zones)
        self.step_lon = max((max(z.bbox[2] for z in zones) - self.lon0) / GRID_SIDE, 1e-9)
        self.step_lat = max((max(z.bbox[3] for z in zones) - self.lat0) / GRID_SIDE, 1e-9)
        for index, zone in enumerate(zones):
            x0, y0 = self._cell(zone.bbox[0], zone.bbox[1])
            x1, y1 = self._cell(zone.bbox[2], zone.bbox[3])
            if (x1 - x0 + 1) * (y1 - y0 + 1) > GRID_MAX_CELLS:
                self.wide.append(index)
                continue
            for x in range(x0, x1 + 1):
                for y in range(y0, y1 + 1):
                    self.cells.setdefault((x, y), []).append(index)

    def _cell(self, lon: float, lat: float) -> tuple[int, int]:
        return math.floor((lon - self.lon0) / self.step_lon), math.floor((lat - self.lat0) / self.step_lat)

    def candidates(self, lon: float, lat: float) -> list[int]:
        found = self.cells.get(self._cell(lon, lat))
        return self.wide + found if found else self.wide


NO_ZONES = Zones()


def parse_zones_text(text: str, *, source: str = "<zones>") -> Zones:
    """Validate the text of a GeoJSON zones file; raise ZonesError (and nothing else) listing every problem."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ZonesError([f"not valid JSON: {exc}"]) from None
    return parse_zones(data, source=source)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_zones(data: Any, *, source: str = "<zones>") -> Zones:
    """Validate decoded GeoJSON; raise ZonesError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise ZonesError(['top level must be a GeoJSON object with "type": "FeatureCollection"'])
    features = data.get("features")
    if not isinstance(features, list):
        raise ZonesError(["features: must be a list of Feature objects"])
    if len(features) > MAX_ZONES:
        raise ZonesError([f"features: {len(features)} zones, at most {MAX_ZONES}"])
    zones: list[Zone] = []
    seen: dict[str, int] = {}
    vertices = 0
    for index, feature in enumerate(features):
        zone = _feature(feature, f"features[{index}]", problems)
        if zone is None:
            continue
        if zone.name in seen:
            problems.append(f"features[{index}]: name {zone.name!r} already used by features[{seen[zone.name]}]")
            continue
        seen[zone.name] = index
        vertices += sum(len(lons) for lons, _ in zone.rings())
        zones.append(zone)
    if vertices > MAX_VERTICES:
        problems.append(f"{vertices} vertices in all, at most {MAX_VERTICES}")
    if problems:
        raise ZonesError(problems)
    return Zones.of(tuple(zones), source)


def _feature(feature: Any, path: str, problems: list[str]) -> Zone | None:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        problems.append(f'{path}: must be an object with "type": "Feature"')
        return None
    before = len(problems)
    props = feature.get("properties")
    if not isinstance(props, dict):
        problems.append(f"{path}.properties: must be an object with name and kind")
        props = {}
    name = props.get("name")
    label = f"{path} ({name})" if isinstance(name, str) and len(name) <= 64 else path
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        problems.append(f"{path}.properties.name: must match {NAME_PATTERN.pattern} (a label value), got {name!r:.80}")
    kind = props.get("kind")
    if kind not in ZONE_KINDS:
        problems.append(f"{label}.properties.kind: must be one of {', '.join(ZONE_KINDS)}, got {kind!r:.80}")
    vehicles = props.get("vehicles", [])
    if not isinstance(vehicles, list) or not all(
        isinstance(v, str) and VEHICLE_PATTERN.fullmatch(v) is not None for v in vehicles
    ):
        problems.append(
            f"{label}.properties.vehicles: must be a list of vehicle ids or glob patterns "
            f"({VEHICLE_PATTERN.pattern}), got {vehicles!r:.80}"
        )
        vehicles = []
    polygons = _geometry(feature.get("geometry"), f"{label}.geometry", problems)
    if len(problems) > before or polygons is None:
        return None
    lons = [x for polygon in polygons for ring in polygon for x in ring[0]]
    lats = [y for polygon in polygons for ring in polygon for y in ring[1]]
    return Zone(
        name=str(name),
        kind=str(kind),
        vehicles=tuple(vehicles),
        polygons=polygons,
        bbox=(min(lons), min(lats), max(lons), max(lats)),
        chunks=tuple(_chunked(ring for polygon in polygons for ring in polygon)),
        feature={"type": "Feature", "properties": dict(props), "geometry": feature["geometry"]},
    )


def _geometry(geometry: Any, path: str, problems: list[str]) -> tuple[tuple[Ring, ...], ...] | None:
    if not isinstance(geometry, dict):
        problems.append(f"{path}: must be a Polygon or MultiPolygon object")
        return None
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygon = _polygon(coordinates, f"{path}.coordinates", problems)
        return None if polygon is None else (polygon,)
    if kind == "MultiPolygon":
        if not isinstance(coordinates, list) or not coordinates:
            problems.append(f"{path}.coordinates: must be a non-empty list of polygons")
            return None
        polygons = [_polygon(p, f"{path}.coordinates[{i}]", problems) for i, p in enumerate(coordinates)]
        return None if any(p is None for p in polygons) else tuple(p for p in polygons if p is not None)
    problems.append(f"{path}.type: must be Polygon or MultiPolygon, got {kind!r:.80}")
    return None


def _polygon(rings: Any, path: str, problems: list[str]) -> tuple[Ring, ...] | None:
    if not isinstance(rings, list) or not rings:
        problems.append(f"{path}: must be a non-empty list of linear rings (outer first, then holes)")
        return None
    parsed = [_ring(r, f"{path}[{i}]", problems) for i, r in enumerate(rings)]
    if any(r is None for r in parsed):
        return None
    return tuple(r for r in parsed if r is not None)


def _ring(ring: Any, path: str, problems: list[str]) -> Ring | None:
    if not isinstance(ring, list) or len(ring) < 4:
        problems.append(f"{path}: a linear ring needs at least 4 positions (the first repeated last)")
        return None
    lons: list[float] = []
    lats: list[float] = []
    bad: list[str] = []
    for i, position in enumerate(ring):
        reason = _position_problem(position)
        if reason is not None:
            bad.append(f"[{i}] {reason}")
            continue
        lons.append(float(position[0]))
        lats.append(float(position[1]))
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        problems.append(f"{path}: bad positions: {shown}")
        return None
    if (lons[0], lats[0]) != (lons[-1], lats[-1]):
        problems.append(f"{path}: ring not closed (its last position must repeat its first)")
        return None
    if any(abs(lons[i + 1] - lons[i]) > 180.0 for i in range(len(lons) - 1)):
        problems.append(f"{path}: an edge crosses the antimeridian; split the zone there (RFC 7946 3.1.9)")
        return None
    crossing = _self_intersection(lons, lats)
    if crossing is not None:
        i, j = crossing
        problems.append(f"{path}: ring intersects itself (edges {i} and {j})")
        return None
    return tuple(lons), tuple(lats)


def _position_problem(position: Any) -> str | None:
    if not isinstance(position, list) or not 2 <= len(position) <= 3:
        return "must be [longitude, latitude] or [longitude, latitude, altitude]"
    if not all(type(v) in (int, float) and math.isfinite(v) for v in position):
        return f"must be finite numbers, got {position!r:.60}"
    lon, lat = position[0], position[1]
    if not -90.0 <= lat <= 90.0:
        hint = " (is the file in [latitude, longitude] order? RFC 7946 is [longitude, latitude])"
        return f"latitude {lat} outside -90..90" + (hint if -90.0 <= lon <= 90.0 else "")
    if not -180.0 <= lon <= 180.0:
        return f"longitude {lon} outside -180..180"
    return None


def _self_intersection(lons: Sequence[float], lats: Sequence[float]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges that touch or cross, or None; a sweep over edges sorted by their
    smallest longitude compares only edges whose longitude spans overlap."""
    n = len(lons) - 1  # edges
    edges = sorted(range(n), key=lambda e: min(lons[e], lons[e + 1]))
    active: list[int] = []
    for e in edges:
        start = min(lons[e], lons[e + 1])
        active = [a for a in active if max(lons[a], lons[a + 1]) >= start]
        for a in active:
            if abs(a - e) in (1, n - 1) and n > 2:
                if _overlapping_neighbours(lons, lats, a, e):
                    return min(a, e), max(a, e)
                continue
            if _segments_touch(lons, lats, a, e):
                return min(a, e), max(a, e)
        active.append(e)
    return None


Point = tuple[float, float]


def _orientation(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(a: Point, b: Point, c: Point) -> bool:
    return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])


def _segments_touch(lons: Sequence[float], lats: Sequence[float], a: int, b: int) -> bool:
    p1, p2 = (lons[a], lats[a]), (lons[a + 1], lats[a + 1])
    q1, q2 = (lons[b], lats[b]), (lons[b + 1], lats[b + 1])
    d1 = _orientation(q1, q2, p1)
    d2 = _orientation(q1, q2, p2)
    d3 = _orientation(p1, p2, q1)
    d4 = _orientation(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        (d1 == 0 and _on_segment(q1, q2, p1))
        or (d2 == 0 and _on_segment(q1, q2, p2))
        or (d3 == 0 and _on_segment(p1, p2, q1))
        or (d4 == 0 and _on_segment(p1, p2, q2))
    )


def _overlapping_neighbours(lons: Sequence[float], lats: Sequence[float], a: int, b: int) -> bool:
    """Adjacent edges share a vertex; they are bad only when they fold back onto each other (collinear and
    overlapping beyond that vertex)."""
    first, second = (a, b) if (a + 1) % (len(lons) - 1) == b else (b, a)
    shared = (lons[second], lats[second])
    before = (lons[first], lats[first])
    after = (lons[second + 1], lats[second + 1])
    if _orientation(before, shared, after) != 0:
        return False
    # collinear: a fold-back when the two far ends lie on the same side of the shared vertex
    return (before[0] - shared[0]) * (after[0] - shared[0]) + (before[1] - shared[1]) * (after[1] - shared[1]) > 0


# -- evaluation --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """One vehicle's geofence status at one fix."""

    status: str
    zone: str | None = None
    """The violated zone (the keep-out zone it is in, or the nearest operating area it is outside of)."""
    keep_out: frozenset[str] = frozenset()
    """Keep-out zones the vehicle is held to be in (hysteresis state)."""
    outside_area: bool = False
    """Whether the vehicle is held to be outside its operating areas (hysteresis state; a keep-out status
    takes precedence in `status`)."""

    @property
    def violation(self) -> bool:
        return self.status in (OUTSIDE_OPERATING_AREA, IN_KEEP_OUT)

    @property
    def zone_kind(self) -> str | None:
        return {OUTSIDE_OPERATING_AREA: OPERATING_AREA, IN_KEEP_OUT: KEEP_OUT}.get(self.status)


UNKNOWN_VERDICT = Verdict(UNKNOWN)


def evaluate(
    zones: Zones,
    vehicle_id: str,
    lon: float,
    lat: float,
    *,
    margin_m: float,
    accuracy_m: float | None = None,
    previous: Verdict | None = None,
) -> Verdict:
    """The vehicle's status at fix (lon, lat), with hysteresis against `previous` (its last verdict).

    Distances are computed only where the decision needs them (a fix within the accuracy or the release band
    of a boundary): a fix well inside its area and away from keep-out boxes costs point-in-polygon tests only.
    """
    mine = zones.applicable(vehicle_id)
    accuracy = accuracy_m or 0.0
    release = margin_m + accuracy
    scale = meters_per_degree(lat)
    held = previous.keep_out if previous is not None else frozenset()
    local = zones.around(lon, lat, mine.indices)
    in_keep_out: list[str] = []
    if held:  # in it until clearly out: more than `release` outside
        band_lon, band_lat = release / scale[0], release / scale[1]
        in_keep_out = [
            z.name
            for z in mine.keep_outs
            if z.name in held
            and z.near(lon, lat, band_lon, band_lat)
            and (z.contains(lon, lat) or z.boundary_distance_m(lon, lat, scale) < release)
        ]
    for zone in local:
        if zone.kind != KEEP_OUT or zone.name in held:
            continue
        if zone.contains(lon, lat) and (accuracy == 0.0 or zone.boundary_distance_m(lon, lat, scale) > accuracy):
            in_keep_out.append(zone.name)
    outside, nearest = _outside_areas(
        mine.areas, local, lon, lat, scale, accuracy=accuracy, release=release, previous=previous
    )
    if in_keep_out:
        return Verdict(IN_KEEP_OUT, in_keep_out[0], frozenset(in_keep_out), outside)
    if outside:
        return Verdict(OUTSIDE_OPERATING_AREA, nearest, outside_area=True)
    return Verdict(INSIDE)


def _outside_areas(
    areas: Sequence[Zone],
    local: Sequence[Zone],
    lon: float,
    lat: float,
    scale: tuple[float, float],
    *,
    accuracy: float,
    release: float,
    previous: Verdict | None,
) -> tuple[bool, str | None]:
    """Whether the fix counts as outside every applicable operating area (`areas`; `local` are the zones whose
    boxes may hold the fix), and the nearest one's name."""
    if not areas:
        return False, None
    was_outside = previous is not None and previous.outside_area
    candidates = (z for z in local if z.kind == OPERATING_AREA and z.contains(lon, lat))
    if not was_outside:
        if next(candidates, None) is not None:  # inside one: enough, no distance needed
            return False, None
    else:
        containing = list(candidates)
        if containing:  # back inside: clearly so only beyond the release band
            depth, deepest = max((z.boundary_distance_m(lon, lat, scale), z.name) for z in containing)
            return depth < release, deepest
    distance, nearest = area_distance(areas, lon, lat, scale)
    assert distance is not None
    return was_outside or -distance > accuracy, nearest


def area_distance(
    areas: Sequence[Zone], lon: float, lat: float, scale: tuple[float, float]
) -> tuple[float | None, str | None]:
    """Signed meters to the nearest of `areas`' boundaries (positive inside one) and that area's name; areas
    whose bounding box is farther than the best distance so far are skipped. (None, None) without areas."""
    if not areas:
        return None, None
    best_inside: tuple[float, str] | None = None
    best_outside: tuple[float, str] | None = None
    by_box = sorted(((z.bbox_distance_m(lon, lat, scale), i) for i, z in enumerate(areas)))
    for box_distance, index in by_box:
        zone = areas[index]
        if best_inside is not None and box_distance > 0.0:
            break  # only zones whose box holds the point can hold it too
        if best_inside is None and best_outside is not None and box_distance >= best_outside[0]:
            break
        if zone.contains(lon, lat):
            d = zone.boundary_distance_m(lon, lat, scale)
            if best_inside is None or d > best_inside[0]:
                best_inside = (d, zone.name)
        elif best_inside is None:
            d = zone.boundary_distance_m(lon, lat, scale)
            if best_outside is None or d < best_outside[0]:
                best_outside = (d, zone.name)
    if best_inside is not None:
        return best_inside[0], best_inside[1]
    assert best_outside is not None
    return -best_outside[0], best_outside[1]
