"""package.xml resolves with rosdep on every supported distribution, and agrees with setup.py.

Checked against the vendored snapshot of rosdistro's keys (test/rosdep_keys.yaml; test/rosdep_keys.py says how
to refresh it): `rosdep install --from-paths src` stops at the first key it cannot resolve.
"""

from __future__ import annotations

import re

import pytest
from rosdep_keys import DISTRIBUTIONS, REPO, load_snapshot, package_xml_keys, rosdep_key, setup_requirements

SNAPSHOT = load_snapshot()
KEYS = package_xml_keys()


@pytest.fixture(scope="module")
def requirements() -> dict[str, list[str]]:
    return setup_requirements()


def unresolved(key: str) -> list[str]:
    """Where `key` does not resolve: the distributions (with their Ubuntu release) missing it."""
    if key in SNAPSHOT["ros"]:
        return [d for d in DISTRIBUTIONS if d not in SNAPSHOT["ros"][key]]
    rules = SNAPSHOT["system"].get(key)
    if not rules:
        return ["not a rosdep key (or not in the snapshot: refresh it, see test/rosdep_keys.py)"]
    return [f"{d} ({release})" for d, release in DISTRIBUTIONS.items() if not rules.get(release)]


def test_every_package_xml_key_resolves_on_humble_jazzy_and_kilted():
    problems = [f"<{tag}>{k}: {', '.join(unresolved(k))}" for tag, keys in KEYS.items() for k in keys if unresolved(k)]
    assert problems == []


def test_a_missing_key_is_caught():
    assert unresolved("python3-pythonjsonlogger")[0].startswith("not a rosdep key")  # the key rosdep stopped at
    assert unresolved("rclpy") == []


def test_the_robot_needs_exactly_the_install_requires(requirements):
    """What pip installs for the bridge is what rosdep installs on a robot, and nothing of the aggregator's."""
    python_keys = sorted(k for k in KEYS["exec_depend"] if k.startswith("python3-"))
    assert sorted(rosdep_key(r) for r in requirements["install"]) == python_keys
    assert "python3-prometheus-client" not in python_keys


def test_test_libraries_are_test_depends_or_documented_as_pip_only(requirements):
    keyed = [rosdep_key(r) for r in requirements["test"] if not unresolved(rosdep_key(r))]
    pip_only = [re.split(r"[<>=!~ ]", r)[0] for r in requirements["test"] if unresolved(rosdep_key(r))]
    assert sorted(set(keyed) - set(KEYS["test_depend"])) == []
    text = (REPO / "docs" / "vehicle-bridge.md").read_text(encoding="utf-8")
    block = text.split("<!-- pip-only test libraries: begin -->")[1].split("<!-- pip-only test libraries: end -->")[0]
    assert re.findall(r"`([A-Za-z0-9_.-]+)`", block) == pip_only
