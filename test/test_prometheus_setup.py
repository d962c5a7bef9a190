"""prometheus_setup: the runnable Prometheus setup derived from the shipped files (demo and e2e tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support import REPO

from tvm_observability.demo import prometheus_setup

SHIPPED = yaml.safe_load((REPO / "config" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))


def test_finds_the_shipped_config():
    assert prometheus_setup.shipped_config_dir() == REPO / "config" / "prometheus"


def test_derived_config_keeps_the_shipped_intervals_and_points_at_the_target():
    config = prometheus_setup.derive_config(SHIPPED, target="127.0.0.1:4321", rule_files=["/x/alerts.yml"])
    job = config["scrape_configs"][0]
    assert job["job_name"] == "telemetry_aggregator"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:4321"]}]
    assert config["global"]["scrape_interval"] == "15s" and config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["/x/alerts.yml"] and "alerting" not in config
    assert SHIPPED["scrape_configs"][0]["static_configs"] != job["static_configs"], "the shipped dict is not mutated"


def test_derived_config_can_shorten_intervals_and_send_to_alertmanager():
    config = prometheus_setup.derive_config(
        SHIPPED, target="t:1", rule_files=[], scrape_interval="1s", evaluation_interval="2s", alertmanagers=["a:9"]
    )
    assert config["global"]["scrape_interval"] == config["global"]["scrape_timeout"] == "1s"
    assert config["global"]["evaluation_interval"] == "2s"
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["a:9"]}]}]}


def test_a_config_without_the_aggregator_job_is_refused():
    broken = {**SHIPPED, "scrape_configs": [{"job_name": "node", "static_configs": []}]}
    with pytest.raises(ValueError, match="telemetry_aggregator"):
        prometheus_setup.derive_config(broken, target="t:1", rule_files=[])


def test_write_setup_copies_every_rule_file(tmp_path):
    config = yaml.safe_load(prometheus_setup.write_setup(tmp_path, target="t:1").read_text())
    assert [p.rsplit("/", 1)[-1] for p in config["rule_files"]] == SHIPPED["rule_files"]
    for path in config["rule_files"]:
        assert yaml.safe_load(Path(path).read_text(encoding="utf-8"))["groups"]


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (
            'ts=x caller=tls_config.go:232 level=info component=web msg="Listening on" address=127.0.0.1:33131',
            "127.0.0.1:33131",
        ),
        ('ts=x level=info component=web msg="Start listening for connections" address=127.0.0.1:0', None),
    ],
)
def test_listening_address(line, address):
    assert prometheus_setup.listening_address(line) == address
