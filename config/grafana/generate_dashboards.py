"""Writes the Grafana dashboards in config/grafana/dashboards/ from the compact definitions below.

Run `python config/grafana/generate_dashboards.py` after editing; a test fails while the committed JSON
differs from what this produces, and another runs every expression against a real Prometheus.
Variables: $datasource (a Prometheus data source) everywhere, $vehicle_id on the vehicle dashboard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
AGG = 'job="telemetry_aggregator"'
V = 'vehicle_id="$vehicle_id"'


def per_vehicle(expr: str, *labels: str, op: str = "max") -> str:
    """`expr` once per vehicle (and `labels`), across every aggregator that exports it: with K shards x 2
    replicas (docs/scaling.md) each vehicle is on two replicas, and the panels show it once."""
    return f"{op} by ({', '.join(('job', 'vehicle_id', *labels))}) ({expr})"


ONLINE = "fleet:vehicles_online:count"
TOTAL = "fleet:vehicles_total:count"
"""The executive numbers, per vehicle across every aggregator (config/prometheus/recording.yml)."""

STATUS_COLOURS = {
    "offline": "red",
    "emergency_stop": "dark-red",
    "error": "red",
    "unknown": "orange",
    "maintenance": "orange",
    "paused": "yellow",
    "idle": "green",
    "on_mission": "blue",
    "charging": "purple",
    "docked": "purple",
}
GEOFENCE_CODES = {"outside_operating_area": (1, "red"), "in_keep_out": (2, "dark-red")}
"""The ring around a vehicle by its geofence status, as the number the map's query gives it (0: inside or
unknown, transparent)."""
STATUS_MAPPINGS = [
    {
        "type": "value",
        "options": {s: {"color": c, "index": i} for i, (s, c) in enumerate(STATUS_COLOURS.items())},
    }
]
GEOFENCE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"color": "transparent", "index": 0},
            **{str(code): {"color": c, "index": code} for code, c in GEOFENCE_CODES.values()},
        },
    }
]


def q(expr: str, legend: str = "", *, table: bool = False) -> dict[str, Any]:
    """A Prometheus target; `table` makes it an instant query in table format (tables, maps)."""
    target: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if table:
        target.update(instant=True, range=False, format="table")
    return target


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    w: int = 6,
    h: int = 6,
    *,
    unit: str | None = None,
    description: str = "",
    options: dict[str, Any] | None = None,
    steps: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    if steps:
        defaults["thresholds"] = steps
        defaults["color"] = {"mode": "thresholds"}
    if mappings:
        defaults["mappings"] = mappings
    for i, target in enumerate(targets):
        target["refId"] = chr(ord("A") + i)
    result: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        result["transformations"] = transformations
    result.update(extra or {})
    return result


def stat(title: str, expr: str, legend: str = "", **kw: Any) -> dict[str, Any]:
    kw.setdefault("options", {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"})
    return panel("stat", title, [q(expr, legend)], kw.pop("w", 4), kw.pop("h", 4), **kw)


def series(title: str, *targets: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return panel("timeseries", title, list(targets), kw.pop("w", 12), kw.pop("h", 8), **kw)


def merged_table(title: str, columns: dict[str, str], w: int = 24, h: int = 10, **kw: Any) -> dict[str, Any]:
    """One row per vehicle: instant queries merged on their labels; `columns` maps a header to its query."""
    targets = [q(expr, table=True) for expr in columns.values()]
    renames = {f"Value #{chr(ord('A') + i)}": name for i, name in enumerate(columns)}
    return panel(
        "table",
        title,
        targets,
        w,
        h,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True, "Value": True},
                    "renameByName": renames,
                },
            },
        ],
        **kw,
    )


ZONES_SRC = "public/maps/tvm-zones.geojson"
"""Where the Grafana host serves the zones file from (copied there: docs/geofences.md#grafana)."""


def markers(name: str, *, legend: bool, style: dict[str, Any]) -> dict[str, Any]:
    """A geomap markers layer at each vehicle's position (the map's queries A and B)."""
    return {
        "type": "markers",
        "name": name,
        "location": {"mode": "coords", "latitude": "Value #A", "longitude": "Value #B"},
        "config": {"showLegend": legend, "style": style},
        "tooltip": True,
    }


def _and(selector: str, matcher: str) -> str:
    """`matcher` added to a `{...}` selector (or "")."""
    return f"{selector[1:-1]},{matcher}" if selector else matcher


def geofence_layers(selector: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The zones (a GeoJSON layer) and a ring around each vehicle coloured by its geofence status, and the
    target that ring needs: the status as a number (GEOFENCE_CODES; a `status` label would clash with
    vehicle_status's in the merged table)."""
    terms = []
    for status, (code, _) in GEOFENCE_CODES.items():
        matcher = _and(selector, f'status="{status}"')
        terms.append(f"{code} * sum by (job, instance, vehicle_id) (vehicle_geofence_status{{{matcher}}})")
    target = q(" + ".join(terms), table=True)
    zones = {
        "type": "geojson",
        "name": "Zones",
        "config": {
            "src": ZONES_SRC,
            "style": {"color": {"fixed": "green"}, "opacity": 0.15},
            "rules": [
                {
                    "check": {"property": "kind", "operation": "eq", "value": "keep_out"},
                    "style": {"color": {"fixed": "red"}, "opacity": 0.35},
                }
            ],
        },
    }
    rings = markers(
        "Geofence",
        legend=False,
        style={"size": {"fixed": 20}, "color": {"field": "Value #E", "fixed": "transparent"}, "opacity": 0.5},
    )
    return [target], [zones, rings]


def geomap(title: str, selector: str, w: int = 16, h: int = 14, *, zones: bool = False) -> dict[str, Any]:
    """Vehicles at their last known position, coloured by status (offline ones stay on the map); with `zones`
    the geofence zones under them and a ring coloured by each vehicle's geofence status."""
    targets = [
        q(per_vehicle(f"vehicle_latitude{selector}"), table=True),
        q(per_vehicle(f"vehicle_longitude{selector}"), table=True),
        q(per_vehicle(f"vehicle_status{selector}", "status") + " == 1", table=True),
        q(per_vehicle(f"vehicle_battery_level{selector}"), table=True),
    ]
    fence_targets, fence_layers = geofence_layers(selector) if zones else ([], [])
    targets += fence_targets
    layer = markers(
        "Vehicles",
        legend=True,
        style={
            "size": {"fixed": 10},
            "color": {"field": "status", "fixed": "green"},
            "text": {"mode": "field", "field": "vehicle_id", "fixed": ""},
            "textConfig": {"fontSize": 12, "offsetY": -16},
        },
    )
    return panel(
        "geomap",
        title,
        targets,
        w,
        h,
        description="Last known GNSS position of every vehicle; colour = status (red: offline or in error)."
        + (
            " Zones: operating areas green, keep-out zones red; a red ring: outside its area or in a keep-out zone."
            if zones
            else ""
        ),
        transformations=[{"id": "merge", "options": {}}],
        mappings=STATUS_MAPPINGS + (GEOFENCE_MAPPINGS if zones else []),
        options={
            "view": {"id": "fit", "lat": 0, "lon": 0, "zoom": 15, "allLayers": True},
            "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
            "basemap": {"type": "default", "name": "Basemap"},
            "layers": [layer, *fence_layers],
            "tooltip": {"mode": "details"},
        },
    )


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place panels left to right on Grafana's 24-column grid, wrapping rows; number them."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        grid = p["gridPos"]
        if x + grid["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        grid.update(x=x, y=y)
        x += grid["w"]
        row_h = max(row_h, grid["h"])
        p["id"] = i
    return panels


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    datasource = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }
    return {
        "uid": uid,
        "title": title,
        "tags": ["tvm_observability"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [datasource, *(variables or [])]},
        "annotations": {"list": []},
        "links": [
            {"title": "Fleet dashboards", "type": "dashboards", "tags": ["tvm_observability"], "asDropdown": True}
        ],
        "panels": layout(panels),
    }


PCT = thresholds((None, "red"), (0.8, "orange"), (0.95, "green"))
BUDGET = thresholds((None, "red"), (0, "orange"), (0.5, "green"))

EXECUTIVE = dashboard(
    "tvm-executive",
    "TVM Fleet — Executive",
    [
        stat("Vehicles online", f"sum({ONLINE})"),
        stat("Fleet size", f"sum({TOTAL})"),
        stat("Online ratio", f"sum({ONLINE}) / sum({TOTAL})", unit="percentunit", steps=PCT),
        stat(
            "Vehicle uptime, 30 days",
            "fleet:vehicle_up:ratio30d",
            unit="percentunit",
            steps=PCT,
            description="Fleet average of each vehicle's 30-day share of time online. SLO: 95 %.",
        ),
        stat(
            "Vehicle uptime error budget left",
            "1 - (1 - fleet:vehicle_up:ratio30d) / scalar(1 - slo:vehicle_uptime:objective)",
            unit="percentunit",
            steps=BUDGET,
        ),
        stat(
            "Firing critical alerts",
            'count(ALERTS{alertstate="firing", severity="critical"}) or vector(0)',
            steps=thresholds((None, "green"), (1, "red")),
        ),
        panel(
            "piechart",
            "Vehicles by status",
            [q(f"count by (status) ({per_vehicle('vehicle_status', 'status')} == 1)", "{{status}}")],
            8,
            9,
            mappings=STATUS_MAPPINGS,
            options={
                "reduceOptions": {"calcs": ["lastNotNull"]},
                "legend": {"displayMode": "table", "values": ["value"]},
            },
        ),
        series(
            "Vehicles online over time",
            q(f"sum({ONLINE})", "online"),
            q(f"sum({TOTAL})", "fleet"),
            w=16,
            h=9,
        ),
        stat(
            "Aggregator availability, 30 days",
            "job:telemetry_aggregator_availability:ratio30d",
            unit="percentunit",
            steps=thresholds((None, "red"), (0.995, "green")),
            w=6,
        ),
        stat(
            "Aggregator error budget left",
            "job:slo_error_budget_remaining:ratio30d",
            unit="percentunit",
            steps=BUDGET,
            w=6,
        ),
        panel(
            "bargauge",
            "Vehicle uptime, 30 days (worst 10)",
            [q("bottomk(10, vehicle:vehicle_up:ratio30d)", "{{vehicle_id}}")],
            12,
            8,
            unit="percentunit",
            steps=PCT,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "horizontal"},
        ),
        series(
            "Vehicles by status over time",
            q(f"sum by (status) ({per_vehicle('vehicle_status', 'status')})", "{{status}}"),
            w=24,
        ),
    ],
)

OPERATIONS = dashboard(
    "tvm-operations",
    "TVM Fleet — Operations",
    [
        stat(
            "Offline vehicles",
            f"count({per_vehicle('vehicle_up')} == 0) or vector(0)",
            steps=thresholds((None, "green"), (1, "red")),
        ),
        stat(
            "Low battery (< 20 %)",
            f"count({per_vehicle('vehicle_battery_level < 20 and on (job, instance, vehicle_id) vehicle_up == 1')})"
            " or vector(0)",
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Sensors in error or stale",
            "count(" + per_vehicle('vehicle_sensor_status{status=~"error|stale"}', "sensor") + " == 1) or vector(0)",
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        stat("Vehicles online", f"sum({ONLINE})"),
        stat(
            "Online ratio",
            f"sum({ONLINE}) / sum({TOTAL})",
            unit="percentunit",
            steps=PCT,
            w=8,
        ),
        geomap("Vehicle positions", "", zones=True),
        panel(
            "alertlist",
            "Alerts (Grafana alert list)",
            [],
            8,
            7,
            options={
                "viewMode": "list",
                "groupMode": "default",
                "maxItems": 50,
                "sortOrder": 1,
                "dashboardAlerts": False,
                "alertInstanceLabelFilter": "",
                "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False, "error": True},
            },
        ),
        merged_table(
            "Firing alerts",
            {"Firing": 'ALERTS{alertstate="firing"}'},
            w=8,
            h=7,
        ),
        merged_table(
            "Vehicles",
            {
                "Online": per_vehicle("vehicle_up"),
                "Battery %": per_vehicle("vehicle_battery_level"),
                "Heartbeat age (s)": per_vehicle("vehicle_last_heartbeat_seconds_ago", op="min"),
                "Bad sensors": per_vehicle(
                    'sum by (job, instance, vehicle_id) (vehicle_sensor_status{status=~"error|stale"})'
                ),
                "Errors": f"sum by (job, vehicle_id) ({per_vehicle('vehicle_errors_total', 'error_code')})",
                "Link outages": per_vehicle("vehicle_link_outages_total"),
                "Latitude": per_vehicle("vehicle_latitude"),
                "Longitude": per_vehicle("vehicle_longitude"),
            },
            description="One row per vehicle; offline vehicles keep their last known values. Sort by a column.",
            options={"sortBy": [{"displayName": "Online", "desc": False}], "cellHeight": "sm"},
            steps=thresholds((None, "red"), (20, "green")),
        ),
    ],
)

VEHICLE_VARIABLE = {
    "name": "vehicle_id",
    "label": "Vehicle",
    "type": "query",
    "datasource": DS,
    "query": {"query": "label_values(vehicle_up, vehicle_id)", "refId": "vehicle_id"},
    "definition": "label_values(vehicle_up, vehicle_id)",
    "refresh": 2,
    "sort": 1,
    "current": {},
    "hide": 0,
}

VEHICLE = dashboard(
    "tvm-vehicle",
    "TVM Vehicle",
    [
        stat(
            "Status",
            per_vehicle(f"vehicle_status{{{V}}}", "status") + " == 1",
            "{{status}}",
            mappings=STATUS_MAPPINGS,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "name", "colorMode": "background"},
        ),
        stat(
            "Online",
            per_vehicle(f"vehicle_up{{{V}}}"),
            steps=thresholds((None, "red"), (1, "green")),
            mappings=[{"type": "value", "options": {"0": {"text": "offline"}, "1": {"text": "online"}}}],
        ),
        stat(
            "Heartbeat age",
            per_vehicle(f"vehicle_last_heartbeat_seconds_ago{{{V}}}", op="min"),
            unit="s",
            steps=thresholds((None, "green"), (15, "orange"), (300, "red")),
        ),
        stat(
            "Battery",
            per_vehicle(f"vehicle_battery_level{{{V}}}"),
            unit="percent",
            steps=thresholds((None, "red"), (10, "orange"), (20, "green")),
        ),
        stat(
            "GNSS fix",
            per_vehicle(f"vehicle_gps_fix{{{V}}}"),
            steps=thresholds((None, "orange"), (1, "green")),
            mappings=[{"type": "value", "options": {"0": {"text": "no fix"}, "1": {"text": "fix"}}}],
        ),
        stat("Bridge restarts", per_vehicle(f"vehicle_bridge_restarts_total{{{V}}}")),
        series("Battery level", q(per_vehicle(f"vehicle_battery_level{{{V}}}"), "level"), unit="percent", w=8),
        series("Battery voltage", q(per_vehicle(f"vehicle_battery_voltage_volts{{{V}}}"), "voltage"), unit="volt", w=8),
        series(
            "Heartbeat age",
            q(per_vehicle(f"vehicle_last_heartbeat_seconds_ago{{{V}}}", op="min"), "age"),
            unit="s",
            w=8,
        ),
        panel(
            "state-timeline",
            "Status over time",
            [q(per_vehicle(f"vehicle_status{{{V}}}", "status") + " == 1", "{{status}}")],
            12,
            6,
            mappings=STATUS_MAPPINGS,
        ),
        merged_table(
            "Sensors",
            {
                "Status": per_vehicle(f"vehicle_sensor_status{{{V}}}", "sensor", "status") + " == 1",
                "Rate (Hz)": per_vehicle(f"vehicle_sensor_rate_hertz{{{V}}}", "sensor"),
            },
            w=12,
            h=6,
        ),
        series(
            "Sensor message rate",
            q(per_vehicle(f"vehicle_sensor_rate_hertz{{{V}}}", "sensor"), "{{sensor}}"),
            unit="hertz",
            w=8,
        ),
        series(
            "Errors by code (new per 5 min)",
            q(per_vehicle(f"increase(vehicle_errors_total{{{V}}}[5m])", "error_code", op="min"), "{{error_code}}"),
            w=8,
        ),
        series(
            "Input ages on the vehicle",
            q(per_vehicle(f"vehicle_input_age_seconds{{{V}}}", "input", op="min"), "{{input}}"),
            unit="s",
            w=8,
        ),
        series("Speed", q(per_vehicle(f"vehicle_speed_meters_per_second{{{V}}}"), "speed"), unit="velocityms", w=8),
        series(
            "Odometry position",
            q(per_vehicle(f"vehicle_pose_x_meters{{{V}}}"), "x"),
            q(per_vehicle(f"vehicle_pose_y_meters{{{V}}}"), "y"),
            unit="lengthm",
            w=8,
        ),
        series("Clock skew", q(per_vehicle(f"vehicle_clock_skew_seconds{{{V}}}"), "skew"), unit="s", w=8),
        series(
            "Push round-trip time (the vehicle's view)",
            q(per_vehicle(f"vehicle_link_rtt_seconds{{{V}}}"), "RTT"),
            unit="s",
            description="Round-trip time of the vehicle's last accepted push, measured by its bridge.",
        ),
        series(
            "Link failures (the vehicle's view, per 5 min)",
            q(per_vehicle(f"increase(vehicle_link_failed_pushes_total{{{V}}}[5m])", op="min"), "failed pushes"),
            q(per_vehicle(f"increase(vehicle_link_outage_seconds_total{{{V}}}[5m])", op="min"), "seconds in outage"),
            description="Failed pushes and time without a link, as the vehicle saw them (they arrive with the first "
            "push after an outage). Where each outage began and ended: the status page, /api/v1/vehicles and "
            "vehicle_link_last_outage_latitude/_longitude.",
        ),
        geomap("Position", f"{{{V}}}", w=24, h=10),
    ],
    [VEHICLE_VARIABLE],
)

ENGINEERING = dashboard(
    "tvm-engineering",
    "TVM Aggregator — Engineering",
    [
        stat("Scrape up", f"up{{{AGG}}}", steps=thresholds((None, "red"), (1, "green"))),
        stat(
            "Persistence healthy", "telemetry_state_persistence_healthy", steps=thresholds((None, "red"), (1, "green"))
        ),
        stat(
            "5xx ratio (5 min)",
            "job:http_requests_5xx:ratio_rate5m",
            unit="percentunit",
            steps=thresholds((None, "green"), (0.05, "red")),
        ),
        stat("Pushes accepted/s", "sum(rate(telemetry_snapshots_received_total[$__rate_interval]))", unit="reqps"),
        stat(
            "Version",
            "telemetry_aggregator_build_info",
            "{{version}}",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "name"},
        ),
        stat("Series scraped", f"scrape_samples_scraped{{{AGG}}}"),
        series(
            "Request rate by endpoint and status",
            q(
                f"sum by (endpoint, status) (rate(http_requests_total{{{AGG}}}[$__rate_interval]))",
                "{{endpoint}} {{status}}",
            ),
            unit="reqps",
        ),
        series("5xx ratio", q("job:http_requests_5xx:ratio_rate5m", "{{instance}}"), unit="percentunit"),
        series(
            "Latency by endpoint",
            *(
                q(
                    f"histogram_quantile({p}, sum by (endpoint, le) "
                    f"(rate(http_request_duration_seconds_bucket{{{AGG}}}[$__rate_interval])))",
                    f"p{int(p * 100)} {{{{endpoint}}}}",
                )
                for p in (0.5, 0.95, 0.99)
            ),
            unit="s",
        ),
        series(
            "Rejections by reason",
            q(f"sum by (reason) (rate(telemetry_snapshots_rejected_total{{{AGG}}}[$__rate_interval]))", "{{reason}}"),
            unit="reqps",
            description="Refused pushes; see the TelemetryRejectionsHigh runbook per reason.",
        ),
        series(
            "Snapshots received and duplicates",
            q("sum(rate(telemetry_snapshots_received_total[$__rate_interval]))", "received"),
            q("sum(rate(telemetry_snapshots_duplicate_total[$__rate_interval]))", "duplicate (retries)"),
            unit="reqps",
        ),
        series(
            "State file writes",
            q("rate(telemetry_state_saves_total[$__rate_interval])", "saves"),
            q("rate(telemetry_state_save_failures_total[$__rate_interval])", "failures"),
            unit="ops",
        ),
        series("Scrape duration", q(f"scrape_duration_seconds{{{AGG}}}", "{{instance}}"), unit="s"),
        series("Largest vehicle clock skew", q("max(abs(vehicle_clock_skew_seconds))", "max |skew|"), unit="s"),
    ],
)

DASHBOARDS = {"executive": EXECUTIVE, "operations": OPERATIONS, "vehicle": VEHICLE, "engineering": ENGINEERING}


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, board in DASHBOARDS.items():
        (OUT / f"{name}.json").write_text(render(board), encoding="utf-8")


if __name__ == "__main__":
    main()
