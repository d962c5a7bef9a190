"""The files we ship stay true: example config loads, docs name every config key and metric."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from support import REPO, parse_metrics
from test_collector import fixture_fleet

from tvm_observability.aggregator.collector import ServiceMetrics, disable_created_series
from tvm_observability.aggregator.config import _TOP_KEYS, Limits, load_config


def test_example_config_loads() -> None:
    config = load_config(REPO / "config" / "aggregator.example.yaml")
    assert config.auth_required and config.state_file and len(config.vehicles) == 2


def test_configuration_reference_names_every_key() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = sorted(_TOP_KEYS - {"limits"}) + [f"limits.{k}" for k in Limits.__slots__]
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_operations_doc_names_every_metric() -> None:
    _, fleet_registry, _ = fixture_fleet()
    disable_created_series()  # as the app factory does at start-up
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
