"""The files we ship stay true: example config loads, docs name every config key and metric, and every file
path a doc or the Makefile names exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from support import REPO, parse_metrics
from test_collector import fixture_fleet
from test_geofence_service import violating_monitor

from tvm_observability.aggregator.collector import GeofenceCollector, ServiceMetrics, disable_created_series
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
    fleet, fleet_registry, _ = fixture_fleet()
    disable_created_series()  # as the app factory does at start-up
    service_registry = CollectorRegistry()
    ServiceMetrics(service_registry)
    geofence_registry = CollectorRegistry()
    geofence_registry.register(GeofenceCollector(fleet, violating_monitor(fleet)))
    names = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for registry in (fleet_registry, service_registry, geofence_registry)
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


# -- every file a doc or the Makefile names exists -------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_TICKED = re.compile(r"`([^`\s]+)`")
_FENCED = re.compile(r"^```.*?^```", re.M | re.S)
_PACKAGE = "tvm_observability"


def _tracked_top_level() -> set[str]:
    """The repository's top-level entries (git's view: generated directories such as test-artifacts are not)."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    if listed.returncode != 0:  # not a git checkout (a source tarball): what is there, less the obviously built
        return {p.name for p in REPO.iterdir() if not p.name.startswith(".venv") and p.name != "test-artifacts"}
    return {line.split("/", 1)[0] for line in listed.stdout.splitlines()}


def _named_docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _repo_path_problem(token: str, top: set[str]) -> str | None:
    """For a backticked token that names a repository path: why it does not resolve (None if it does or is
    not a repo path). Forms: `config/x.yml` (from the root), `bridge/params.py` (inside the package),
    `test_x.py::test_name` (a test, checked down to its function), globs (`config/prometheus/*.yml`)."""
    token = token if token.endswith("...") else token.rstrip(".,;:")
    file_part, _, test_name = token.partition("::")
    if re.fullmatch(r"test_\w+\.py", file_part):
        file_part = f"test/{file_part}"
    first = file_part.split("/", 1)[0]
    if not first:
        return None  # an absolute path: a URL path, a ROS topic, a path on the host
    if "/" not in file_part and file_part not in top:
        return None  # a bare name (`app.py`, `alertmanager.yml`): the surrounding text says where
    if first in top:
        path = file_part
    elif (REPO / _PACKAGE / first).is_dir():
        path = f"{_PACKAGE}/{file_part}"
    else:
        return None  # an URL path, a ROS topic or message type, a media type: not a file of ours
    if any(c in path for c in "*?["):
        return None if any(REPO.glob(path)) else f"{token}: no file matches"
    if not (REPO / path).exists():
        return f"{token}: {path} does not exist"
    if test_name:
        name = test_name.split("[", 1)[0].split("::")[-1]
        prefix = name.endswith("...")
        pattern = rf"def {re.escape(name.removesuffix('...'))}" + (r"\w*" if prefix else r"\b")
        if not re.search(pattern, (REPO / path).read_text(encoding="utf-8")):
            return f"{token}: {path} has no test {name}"
    return None


def test_every_path_a_doc_names_exists() -> None:
    """Relative links and backticked repository paths in README.md and docs/**/*.md resolve (outside quoted
    blocks: docs/benchmarks.md quotes the README's section, whose links are relative to the README)."""
    top = _tracked_top_level()
    problems = []
    for doc in _named_docs():
        text = _FENCED.sub("", doc.read_text(encoding="utf-8"))  # quoted blocks are not links
        where = doc.relative_to(REPO)
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            if not (doc.parent / target.split("#", 1)[0]).exists():
                problems.append(f"{where}: link {target}")
        for token in _TICKED.findall(text):
            problem = _repo_path_problem(token, top)
            if problem:
                problems.append(f"{where}: {problem}")
    assert problems == [], "\n".join(problems)


def test_every_path_and_module_the_makefile_names_exists() -> None:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    top = _tracked_top_level()
    problems = []
    for token in re.findall(r"[\w.-]+(?:/[\w.*-]+)+/?|[\w-]+\.(?:md|txt|py|toml|yaml|yml|json)\b", text):
        if token.split("/", 1)[0] in top and not (REPO / token).exists():
            problems.append(f"Makefile: {token} does not exist")
    for module in re.findall(r"-m ([a-z_][\w.]*)", text):  # python -m of ours (not venv, not pytest's -m ros)
        base = REPO / module.replace(".", "/")
        if module.split(".")[0] not in top:
            continue
        if not (base.with_suffix(".py").exists() or (base / "__init__.py").exists()):
            problems.append(f"Makefile: module {module} does not exist")
    assert problems == [], "\n".join(problems)
