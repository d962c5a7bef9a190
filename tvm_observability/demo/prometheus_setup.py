"""A runnable Prometheus setup derived from the shipped config/prometheus files (demo and end-to-end tests).

The shipped prometheus.yml and rule files are the source: this module only points the scrape job at a
given aggregator (and the alerting section at given Alertmanagers, or none), optionally shortens intervals,
and writes the result into a private directory.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

AGGREGATOR_JOB = "telemetry_aggregator"
"""Job name the shipped rules select on."""
REMOTE_WRITE_RECEIVER = "--web.enable-remote-write-receiver"
"""The flag that opens Prometheus's `/api/v1/write` to the aggregator's backfill (docs/history.md)."""
REMOTE_WRITE_PATH = "/api/v1/write"
_LISTENING = re.compile(r'msg="Listening on" address=(\S+)')

RulesTransform = Callable[[dict[str, Any]], dict[str, Any]]


def shipped_config_dir() -> Path:
    """config/prometheus of this checkout, or of the installed package (share/tvm_observability/config)."""
    here = Path(__file__).resolve().parent
    candidates = [here.parents[1] / "config" / "prometheus"]
    candidates += [p / "share" / "tvm_observability" / "config" / "prometheus" for p in here.parents]
    for candidate in candidates:
        if (candidate / "prometheus.yml").is_file():
            return candidate
    raise FileNotFoundError("config/prometheus/prometheus.yml not found next to the package or in share/")


def derive_config(
    shipped: dict[str, Any],
    *,
    target: str,
    rule_files: list[str],
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    alertmanagers: list[str] | None = None,
) -> dict[str, Any]:
    """The shipped config with the aggregator job scraping `target`, the given rule files, and alerts sent to
    `alertmanagers` (host:port each; none: alerts stay in Prometheus's /api/v1/alerts)."""
    config = copy.deepcopy(shipped)
    glob = config.setdefault("global", {})
    if scrape_interval is not None:
        glob["scrape_interval"] = scrape_interval
        glob["scrape_timeout"] = scrape_interval
    if evaluation_interval is not None:
        glob["evaluation_interval"] = evaluation_interval
    config["rule_files"] = list(rule_files)
    config.pop("alerting", None)
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == AGGREGATOR_JOB]
    if len(jobs) != 1:
        raise ValueError(f"the shipped config must have exactly one {AGGREGATOR_JOB!r} scrape job")
    jobs[0]["static_configs"] = [{"targets": [target]}]
    return config


def write_setup(
    workdir: Path,
    *,
    target: str,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    rules_transform: RulesTransform | None = None,
    alertmanagers: list[str] | None = None,
    source: Path | None = None,
) -> Path:
    """Write prometheus.yml and its rule files (through `rules_transform` if given) into workdir; return the config."""
    source = source or shipped_config_dir()
    shipped = yaml.safe_load((source / "prometheus.yml").read_text(encoding="utf-8"))
    workdir.mkdir(parents=True, exist_ok=True)
    rule_paths = []
    for name in shipped.get("rule_files", []):
        rules = yaml.safe_load((source / name).read_text(encoding="utf-8"))
        if rules_transform is not None:
            rules = rules_transform(rules)
        path = workdir / Path(name).name
        path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
        rule_paths.append(str(path))
    config = derive_config(
        shipped,
        target=target,
        rule_files=rule_paths,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        alertmanagers=alertmanagers,
    )
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_path


def command(
    binary: str, config: Path, data_dir: Path, listen: str = "127.0.0.1:0", *, remote_write_receiver: bool = False
) -> list[str]:
    """The Prometheus command line: loopback listener, private TSDB directory; with `remote_write_receiver`, the
    aggregator's backfill is accepted on REMOTE_WRITE_PATH (the out-of-order window is in the shipped config)."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=info",
        *([REMOTE_WRITE_RECEIVER] if remote_write_receiver else []),
    ]


def listening_address(log_line: str) -> str | None:
    """The bound host:port from Prometheus's 'Listening on' log line (it resolves port 0)."""
    match = _LISTENING.search(log_line)
    return match.group(1) if match else None
