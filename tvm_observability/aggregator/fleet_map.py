"""The status page's fleet map: an inline SVG of the zones and every vehicle's last known position. Pure.

No tiles, no scripts, no external resources: it works without internet access and under the page's strict
CSP. Longitude is scaled by the cosine of the map's middle latitude (an equirectangular projection, true to
shape at fleet scale). Every zone name and vehicle id is escaped. With many vehicles the ids move from labels
to each marker's tooltip (`<title>`), so the map stays readable with 1,000 vehicles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from html import escape

from .fleet_view import VehicleRow
from .geofence import Zones

SIZE = 1000.0
"""The map's longer side, in SVG units."""
MAX_LABELS = 60
"""Vehicle ids are written next to their markers up to this many vehicles (tooltips always)."""

STYLE = """
.map{width:100%;max-width:900px;height:auto;display:block;background:#fff;border:1px solid #dde1e6;margin:0 0 8px}
.map .operating_area{fill:#2e7d32;fill-opacity:.07;stroke:#2e7d32;stroke-width:2}
.map .keep_out{fill:#c62828;fill-opacity:.18;stroke:#c62828;stroke-width:2;stroke-dasharray:8 4}
.map .zone-name{font-size:18px;fill:#49525c}
.map .v circle{stroke:#fff;stroke-width:1.5}
.map .v.ok circle{fill:#2e7d32}.map .v.warning circle{fill:#ef8f00}.map .v.critical circle{fill:#c62828}
.map .v.old circle{fill:#9e9e9e;fill-opacity:.6;stroke:#424242;stroke-dasharray:3 2}
.map .v.fence circle{stroke:#c62828;stroke-width:4}
.map text.id{font-size:16px;fill:#1d2329}
.map .v.old text.id{fill:#757575;font-style:italic}
.legend{font-size:.85em;color:#49525c;margin:0 0 12px}
"""


def render_map(zones: Zones, rows: Sequence[VehicleRow]) -> str:
    """The map's HTML (an SVG and its legend), or "" when there is nothing to draw."""
    placed = [r for r in rows if _finite(r.longitude) and _finite(r.latitude)]
    lons = [r.longitude for r in placed if r.longitude is not None]
    lats = [r.latitude for r in placed if r.latitude is not None]
    for zone in zones.zones:
        lons += [zone.bbox[0], zone.bbox[2]]
        lats += [zone.bbox[1], zone.bbox[3]]
    if not lons:
        return ""
    frame = _Frame(min(lons), min(lats), max(lons), max(lats))
    radius = 5.0 if len(placed) > MAX_LABELS else 9.0
    parts = [
        f'<svg class="map" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {frame.width:.0f} {frame.height:.0f}" '
        'role="img" aria-label="Fleet map: zones and last known vehicle positions">'
    ]
    for zone in zones.zones:
        path = " ".join(_ring_path(frame, ring) for ring in zone.rings())
        name = escape(zone.name)
        parts.append(
            f'<path class="{zone.kind}" fill-rule="evenodd" d="{path}"><title>{name} ({zone.kind})</title></path>'
        )
        x, y = frame.xy(zone.bbox[0], zone.bbox[3])
        parts.append(f'<text class="zone-name" x="{x + 4:.1f}" y="{y + 20:.1f}">{name}</text>')
    for r in sorted(placed, key=lambda r: -r.level):  # the most urgent drawn last, on top
        parts.append(_marker(frame, r, radius, label=len(placed) <= MAX_LABELS))
    parts.append("</svg>")
    legend = (
        '<p class="legend"><span style="color:#2e7d32">●</span> ok · <span style="color:#ef8f00">●</span> warning · '
        '<span style="color:#c62828">●</span> critical · grey dashed, id in italics: offline, at its last known '
        "position (old) · red ring: geofence violation · green: operating areas · red dashed: keep-out zones</p>"
    )
    return "\n".join(parts) + "\n" + legend


class _Frame:
    """Degrees to SVG units: the box of everything drawn plus a margin, the longer side SIZE units."""

    def __init__(self, min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> None:
        self.kx = math.cos(math.radians((min_lat + max_lat) / 2))
        span_x = max((max_lon - min_lon) * self.kx, 1e-6)
        span_y = max(max_lat - min_lat, 1e-6)
        margin = 0.05 * max(span_x, span_y)
        self.x0, self.y0 = min_lon * self.kx - margin, max_lat + margin
        self.scale = SIZE / (max(span_x, span_y) + 2 * margin)
        self.width = (span_x + 2 * margin) * self.scale
        self.height = (span_y + 2 * margin) * self.scale

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        return (lon * self.kx - self.x0) * self.scale, (self.y0 - lat) * self.scale


def _ring_path(frame: _Frame, ring: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    points = (frame.xy(lon, lat) for lon, lat in zip(ring[0], ring[1], strict=True))
    return "M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in points) + " Z"


def _marker(frame: _Frame, r: VehicleRow, radius: float, *, label: bool) -> str:
    assert r.longitude is not None and r.latitude is not None
    x, y = frame.xy(r.longitude, r.latitude)
    classes = ["v", r.level_name]
    if not r.online:
        classes.append("old")
    if r.violation is not None:
        classes.append("fence")
    vid = escape(r.vehicle_id)
    tooltip = escape(" · ".join(_tooltip(r)))
    text = f'<text class="id" x="{x + radius + 3:.1f}" y="{y + 5:.1f}">{vid}{"" if r.online else " (old)"}</text>'
    return (
        f'<g class="{" ".join(classes)}" id="map-{vid}"><circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:g}">'
        f"<title>{tooltip}</title></circle>{text if label else ''}</g>"
    )


def _tooltip(r: VehicleRow) -> Iterator[str]:
    yield r.vehicle_id
    yield r.status if r.online else "offline: last known position"
    if r.geofence is not None:
        yield f"geofence {r.geofence}"
    yield from r.reasons


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
