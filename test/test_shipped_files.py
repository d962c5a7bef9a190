"""The files we ship stay true: example config loads, docs name every config key and metric."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from support import REPO, parse_metrics
from test_collector import fixture_fleet

from tvm_observability.aggregator.collector import ServiceMetrics
from tvm_observability.aggregator.config import TABLE_BEGIN, TABLE_END, load_config, reference_rows, reference_table


def test_example_config_loads() -> None:
    config = load_config(REPO / "config" / "aggregator.example.yaml")
    assert config.auth_required and config.state_file and len(config.vehicles) == 2


def test_configuration_reference_is_the_generated_key_table() -> None:
    """Each key's default, type, reload mark and meaning are declared once in config.py; the doc's table is
    that declaration, so it cannot claim a key reloads when it does not."""
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0]
    assert block == reference_table(), "regenerate: python -m tvm_observability.aggregator.config docs/configuration.md"
    rows = {name: reloads for name, _, reloads, _ in reference_rows()}
    assert "| `limits.idle_timeout_s` | number ≥ 0.5 (`75`) | restart |" in block
    assert not rows["limits.idle_timeout_s"] and not rows["listen"] and rows["vehicles"]


def test_operations_doc_names_every_metric() -> None:
    _, fleet_registry, _ = fixture_fleet()
    service_registry = CollectorRegistry()
    ServiceMetrics(service_registry)
    names = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for registry in (fleet_registry, service_registry)
        for name, _ in parse_metrics(generate_latest(registry).decode())
    }
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/operations.md does not document {missing}"


def test_systemd_unit_is_sandboxed() -> None:
    unit = (REPO / "config" / "systemd" / "telemetry-aggregator.service").read_text(encoding="utf-8")
    for line in (
        "DynamicUser=yes",
        "StateDirectory=tvm-observability",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
    ):
        assert line in unit
    assert Path(unit.split("ExecStart=")[1].split()[0]).name == "telemetry_aggregator"
