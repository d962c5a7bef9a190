"""The shipped Grafana dashboards: generated from their definitions, well formed, provisionable.

That every expression returns data is proven against a real Prometheus in test_e2e_alerting.py.
"""

from __future__ import annotations

import importlib.util
import json

import yaml
from support import REPO

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


def test_operations_has_geomap_coloured_by_status_alert_list_and_vehicle_table():
    board = json.loads((GRAFANA / "dashboards" / "operations.json").read_text(encoding="utf-8"))
    kinds = {p["type"]: p for p in board["panels"]}
    layer = kinds["geomap"]["options"]["layers"][0]
    assert layer["config"]["style"]["color"]["field"] == "status"
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
