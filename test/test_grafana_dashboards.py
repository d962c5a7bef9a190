"""The shipped Grafana dashboards: generated from their definitions, well formed, provisionable, and querying
only series that exist (what the aggregator exports, the shipped recording rules, Prometheus's own).

That every expression returns data is proven against a real Prometheus in test_e2e_alerting.py, which under CI
cannot skip (a missing Prometheus fails it).
"""

from __future__ import annotations

import importlib.util
import json
import re

import yaml
from prometheus_client import CollectorRegistry
from support import REPO
from test_collector import fixture_fleet
from test_geofence_service import violating_monitor

from tvm_observability.aggregator.collector import GeofenceCollector, ServiceMetrics

GRAFANA = REPO / "config" / "grafana"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_dashboards", GRAFANA / "generate_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_json_is_what_the_generator_writes():
    generator = _generator()
    for name, board in generator.DASHBOARDS.items():
        committed = (GRAFANA / "dashboards" / f"{name}.json").read_text(encoding="utf-8")
        assert committed == generator.render(board), f"run python config/grafana/generate_dashboards.py ({name})"


def test_dashboards_are_well_formed():
    uids = set()
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for p in board["panels"]:
            grid = p["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (path.name, p["title"])
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
        assert board["templating"]["list"][0]["name"] == "datasource"


def test_operations_has_geomap_coloured_by_status_and_geofence_with_zones_alert_list_and_vehicle_table():
    board = json.loads((GRAFANA / "dashboards" / "operations.json").read_text(encoding="utf-8"))
    kinds = {p["type"]: p for p in board["panels"]}
    layers = {layer["name"]: layer for layer in kinds["geomap"]["options"]["layers"]}
    assert layers["Vehicles"]["config"]["style"]["color"]["field"] == "status"
    assert layers["Geofence"]["config"]["style"]["color"]["field"] == "Value #E"
    assert layers["Zones"]["type"] == "geojson" and layers["Zones"]["config"]["src"] == "public/maps/tvm-zones.geojson"
    geofence_mapping = kinds["geomap"]["fieldConfig"]["defaults"]["mappings"][1]["options"]
    assert set(geofence_mapping) == {"0", "1", "2"}
    assert "offline" in kinds["geomap"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert "alertlist" in kinds
    assert any(p["title"] == "Vehicles" and p["type"] == "table" for p in board["panels"])


def test_vehicle_dashboard_has_a_vehicle_variable():
    board = json.loads((GRAFANA / "dashboards" / "vehicle.json").read_text(encoding="utf-8"))
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "vehicle_id"]
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert exprs and all("$vehicle_id" in e for e in exprs)


def test_provisioning_files():
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    assert source["datasources"][0]["jsonData"]["timeInterval"] == "15s"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "tvm_observability.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_dashboards_exist_for_every_view():
    assert {p.stem for p in (GRAFANA / "dashboards").glob("*.json")} == {
        "executive",
        "operations",
        "vehicle",
        "engineering",
    }


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum")}
"""The series names of a metric family by its type (prometheus_client names a counter family without _total)."""
_PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
_PROMQL_WORDS = {"by", "and", "or", "unless", "bool", "offset", "without", "on", "ignoring", "group_left",
                 "group_right", "Inf", "inf", "NaN", "nan"}  # fmt: skip


def _series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions (followed by `(`),
    keywords, label names (in `{...}`, `by (...)` and the like), strings or range durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = re.finditer(r"(?<![\w$])([a-zA-Z_:][\w:]*)\s*(\()?", expr)
    return {m.group(1) for m in found if not m.group(2) and m.group(1) not in _PROMQL_WORDS}


def _known_series() -> set[str]:
    fleet, fleet_registry, _ = fixture_fleet()
    service_registry = CollectorRegistry()
    ServiceMetrics(service_registry)
    geofence_registry = CollectorRegistry()
    geofence_registry.register(GeofenceCollector(fleet, violating_monitor(fleet)))
    exported = {
        family.name + suffix
        for registry in (fleet_registry, service_registry, geofence_registry)
        for family in registry.collect()  # families without samples yet (labelled, no child) count too
        for suffix in _SUFFIXES.get(family.type, ("",))
    }
    recording = yaml.safe_load((REPO / "config" / "prometheus" / "recording.yml").read_text(encoding="utf-8"))
    recorded = {rule["record"] for group in recording["groups"] for rule in group["rules"] if "record" in rule}
    return exported | recorded | _PROMETHEUS_OWN


def test_every_dashboard_query_selects_series_that_exist():
    """A renamed metric or recording rule breaks a panel silently in Grafana; here it fails."""
    known = _known_series()
    unknown = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if t.get("expr")]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                exprs.append(re.sub(r",[^,)]*\)\s*$", ")", variable["query"]["query"]))  # label_values(m, label)
        unknown += [(path.stem, name, expr) for expr in exprs for name in sorted(_series_names(expr) - known)]
    assert unknown == [], "\n".join(map(str, unknown))


def test_series_names_are_read_from_promql():
    expr = 'sum by (vehicle_id) (rate(vehicle_errors_total{error_code!="x"}[5m])) / on (job) group_left up'
    assert _series_names(expr) == {"vehicle_errors_total", "up"}
    assert _series_names("label_values(vehicle_up)") == {"vehicle_up"}
