"""The aggregator's libraries are listed once (aggregator.AGGREGATOR_REQUIRES): setup.py's `aggregator` extra
is made from it, and telemetry_aggregator checks it at start-up with a clear message (not at import)."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys

import pytest
from rosdep_keys import setup_requirements

from tvm_observability import aggregator
from tvm_observability.aggregator import cli


@pytest.fixture(scope="module")
def requirements() -> dict[str, list[str]]:
    return setup_requirements()


def test_the_aggregator_extra_is_the_checked_list(requirements):
    assert requirements["aggregator"] == [f"{n}>={v}" for n, v in aggregator.AGGREGATOR_REQUIRES.items()]
    assert "prometheus-client>=0.17" in requirements["aggregator"] and "aiohttp>=3.9" in requirements["aggregator"]


def test_colcon_runs_pytest(requirements):
    """colcon picks pytest over `python -m unittest` when the `test` extra names pytest (its own rule)."""
    assert any(re.split(r" |<|=|>|!", r)[0] == "pytest" for r in requirements["test"])


def test_release_parsing():
    assert aggregator._release("3.8.1") == (3, 8)
    assert aggregator._release("0.17.1") == (0, 17)
    assert aggregator._release("3.10.0rc1") == (3, 10)
    assert aggregator._release("2") == (2,)


def test_installed_versions_pass():
    aggregator.check_requirements()


def old_versions(monkeypatch):
    versions = {
        "aiohttp": "3.8.1",
        "prometheus-client": "0.9.0",
        "python-json-logger": "2.0.2",
        "pyyaml": "6.0",
        "msgspec": "0.23.0",
    }
    monkeypatch.setattr(aggregator, "version", versions.__getitem__)


def test_too_old_libraries_are_named(monkeypatch):
    old_versions(monkeypatch)
    with pytest.raises(SystemExit) as info:
        aggregator.check_requirements()
    message = str(info.value.code)
    assert "aiohttp>=3.9 (found 3.8.1)" in message and "prometheus-client>=0.17 (found 0.9.0)" in message
    assert "python-json-logger" not in message and "pyyaml" not in message
    assert "pip install '.[aggregator]'" in message


def test_missing_library_is_named(monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(aggregator, "version", missing)
    with pytest.raises(SystemExit, match=r"aiohttp>=3\.9 \(found none\)"):
        aggregator.check_requirements()


def test_the_check_runs_at_start_up_before_anything_else(monkeypatch, capsys):
    old_versions(monkeypatch)
    with pytest.raises(SystemExit, match=r"aiohttp>=3\.9"):
        cli.main(["--check-config"])
    assert capsys.readouterr().out == ""  # not even the configuration was read


def test_importing_the_aggregator_checks_nothing():
    """Importing its modules (as tests, the bench and the demo do) never exits, whatever is installed."""
    code = (
        "import importlib.metadata as m; m.version = lambda name: '0.1'; "
        "import tvm_observability.aggregator.fleet, tvm_observability.aggregator.cli; print('imported')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "imported", out.stderr
    assert importlib.import_module("tvm_observability.aggregator") is aggregator
