"""The HTML fleet status page: one self-contained document, no scripts, no external resources. Pure.

Every value that reaches the page is escaped: sensor messages, statuses and error codes come from
vehicles and must be treated as hostile. The page refreshes itself with a meta refresh, and turns
its table into one card per vehicle on narrow (phone) screens.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape

from .fleet_map import STYLE as MAP_STYLE
from .fleet_view import FleetView, LinkView, SensorView, VehicleRow

REFRESH_S = 5
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
"""Only the page's inline style may load: an escaping bug could still not run a script or call out."""

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:12px;background:#f4f5f7;
color:#1d2329;font-size:16px}
h1{font-size:1.3em;margin:0 0 4px}
.summary{margin:0 0 12px;color:#49525c}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 8px;border-bottom:1px solid #dde1e6;text-align:left;vertical-align:top}
th{background:#e9ecef;font-size:.85em;text-transform:uppercase;letter-spacing:.03em}
tr.critical td:first-child{border-left:6px solid #c62828}
tr.warning td:first-child{border-left:6px solid #ef8f00}
tr.ok td:first-child{border-left:6px solid #2e7d32}
.badge{display:inline-block;padding:1px 6px;border-radius:4px;font-size:.85em;background:#e0e0e0}
.badge.critical{background:#c62828;color:#fff}.badge.warning{background:#ef8f00;color:#fff}
.badge.ok{background:#2e7d32;color:#fff}
.s-ok{color:#2e7d32}.s-warn{color:#b26a00}.s-error,.s-stale{color:#c62828;font-weight:600}
.msg{color:#49525c;font-size:.85em;word-break:break-word}
.reasons{font-size:.85em;color:#49525c}
ul{margin:0;padding-left:16px}
@media (max-width:700px){
 thead{display:none}
 table,tbody,tr,td{display:block;width:auto}
 tr{margin:0 0 10px;border-radius:6px;box-shadow:0 1px 2px rgba(0,0,0,.15);background:#fff}
 td{border:none;padding:3px 10px}
 td[data-label]::before{content:attr(data-label) ": ";font-weight:600;color:#49525c}
 tr td:first-child{font-size:1.1em;padding-top:8px}
}
"""


def render(view: FleetView, fleet_map: str = "") -> str:
    """The whole page for `view`, as a string; `fleet_map` is the map's HTML (fleet_map.py), already escaped."""
    generated = _when(view.generated_at)
    rows = "\n".join(_row(r) for r in view.rows) or '<tr><td colspan="8">No vehicles configured.</td></tr>'
    summary = (
        f"{view.online} of {len(view.rows)} online · {view.count(0)} critical · {view.count(1)} warning · "
        f"updated {generated} · refreshes every {REFRESH_S} s"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>Fleet status ({view.online}/{len(view.rows)} online)</title>
<style>{_STYLE}{MAP_STYLE}</style>
</head>
<body>
<h1>Fleet status</h1>
<p class="summary">{escape(summary)}</p>
{fleet_map}
<table>
<thead><tr><th>Vehicle</th><th>Status</th><th>Battery</th><th>Last heartbeat</th><th>Sensors</th><th>Errors</th>
<th>Position</th><th>Attention</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def _row(r: VehicleRow) -> str:
    vid = escape(r.vehicle_id)
    roster = "" if r.on_roster else ' <span class="badge">not on roster</span>'
    reasons = escape(", ".join(r.reasons)) if r.reasons else "—"
    return (
        f'<tr class="{r.level_name}" id="vehicle-{vid}">'
        f"<td><strong>{vid}</strong>{roster}</td>"
        f'<td data-label="Status">{escape(r.status)}</td>'
        f'<td data-label="Battery">{_battery(r)}</td>'
        f'<td data-label="Last heartbeat">{format_age(r.heartbeat_age_s)}{_link(r.link)}</td>'
        f'<td data-label="Sensors">{_sensors(r.sensors)}</td>'
        f'<td data-label="Errors">{_errors(r)}</td>'
        f'<td data-label="Position">{_position(r)}</td>'
        f'<td data-label="Attention"><span class="badge {r.level_name}">{r.level_name}</span>'
        f' <span class="reasons">{reasons}</span></td>'
        "</tr>"
    )


def format_age(age_s: float | None) -> str:
    """A heartbeat age for humans: 'never', '3 s ago', '4 min ago', '2 h 5 min ago'."""
    if age_s is None:
        return "never"
    seconds = int(age_s)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"


def _link(link: LinkView | None) -> str:
    """The vehicle's view of its link, under its heartbeat: RTT, outages, where the last one began and ended."""
    if link is None:
        return ""
    rtt = "" if link.rtt_s is None else f"RTT {link.rtt_s * 1000:.0f} ms · "
    parts = [f"{rtt}{link.outages} outages ({link.outage_seconds:.0f} s), {link.failed_pushes} failed pushes"]
    last = link.last_outage
    if last is not None:
        start = f"{_when(last.started_at)} at {_coordinates(last.start_lat, last.start_lon)}"
        end = (
            "ongoing"
            if last.ended_at is None
            else f"{_when(last.ended_at)} at {_coordinates(last.end_lat, last.end_lon)}"
        )
        parts.append(f"last outage: {start} → {end}")
    return '<div class="msg">' + "<br>".join(escape(p) for p in parts) + "</div>"


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _coordinates(lat: float | None, lon: float | None) -> str:
    return "unknown position" if lat is None or lon is None else f"{lat:.5f}, {lon:.5f}"


def _battery(r: VehicleRow) -> str:
    if r.battery_pct is None:
        return "—"
    charging = " ⚡ charging" if r.charging else ""
    return f"{r.battery_pct:.0f} %{charging}"


def _sensors(sensors: tuple[SensorView, ...]) -> str:
    if not sensors:
        return "—"
    items = []
    for s in sensors:
        rate = "" if s.rate_hz is None else f" {s.rate_hz:.1f} Hz"
        message = f'<div class="msg">{escape(s.message)}</div>' if s.message else ""
        label = f'<span class="s-{escape(s.status)}">{escape(s.name)}: {escape(s.status)}</span>'
        items.append(f"<li>{label}{rate}{message}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _errors(r: VehicleRow) -> str:
    if not r.errors:
        return "0" + _events(r)
    detail = ", ".join(f"{escape(code)} {count}" for code, count in sorted(r.errors.items()))
    return f'{r.errors_total}<div class="msg">{detail}</div>{_events(r)}'


def _events(r: VehicleRow) -> str:
    """The vehicle's last error events, newest first (every string escaped: it came from the vehicle)."""
    items = [
        f'<li title="{escape(str(e["id"]))}">{escape(str(e["timestamp"]))} {escape(str(e["level"]))} '
        f"{escape(str(e['component']))}{'' if e['code'] is None else ' ' + escape(str(e['code']))}: "
        f"{escape(str(e['message']))}</li>"
        for e in reversed(r.events)
    ]
    return f'<ul class="events">{"".join(items)}</ul>' if items else ""


def _position(r: VehicleRow) -> str:
    if r.latitude is None or r.longitude is None or not (math.isfinite(r.latitude) and math.isfinite(r.longitude)):
        return "—"
    return f"{r.latitude:.5f}, {r.longitude:.5f}"
