"""The rosdep keys this package relies on, as a vendored snapshot of ros/rosdistro (test/rosdep_keys.yaml).

`rosdep install --from-paths src` stops at the first key it cannot resolve, so every dependency in
package.xml must be a key of rosdistro's `rosdep/base.yaml` / `rosdep/python.yaml` that resolves on the Ubuntu
release of each supported ROS distribution, or a ROS package released in each of them. test_rosdep_keys.py
checks package.xml and setup.py against the snapshot; refresh it (when adding a dependency, or to follow
rosdistro) with:

    git clone --depth 1 https://github.com/ros/rosdistro /tmp/rosdistro
    .venv/bin/python test/rosdep_keys.py /tmp/rosdistro
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).resolve().parent / "rosdep_keys.yaml"
DISTRIBUTIONS = {"humble": "jammy", "jazzy": "noble", "kilted": "noble"}
"""The supported ROS 2 distributions and the Ubuntu release each runs on."""
_PIP_TO_KEY = {"pyyaml": "python3-yaml"}
"""Where rosdistro's key is not python3-<pip name>."""


def rosdep_key(requirement: str) -> str:
    """The rosdep key a pip requirement would have by rosdistro's naming ('hypothesis>=6' -> python3-hypothesis)."""
    name = re.split(r"[ <>=!~;\[]", requirement, maxsplit=1)[0].lower()
    return _PIP_TO_KEY.get(name, f"python3-{name}")


def package_xml_keys() -> dict[str, list[str]]:
    """package.xml's dependency keys by tag (exec_depend, test_depend, ...)."""
    keys: dict[str, list[str]] = {}
    for element in ET.parse(REPO / "package.xml").getroot():
        if element.tag.endswith("depend") and element.text:
            keys.setdefault(element.tag, []).append(element.text.strip())
    return keys


def setup_requirements() -> dict[str, list[str]]:
    """setup.py's install_requires ('install') and extras, read the way colcon reads them (setup.py not run to
    install anything)."""
    code = (
        "import json, sys; from distutils.core import run_setup; "
        "d = run_setup(sys.argv[1], stop_after='init'); "
        "print(json.dumps({'install': d.install_requires, **d.extras_require}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "setup.py")], cwd=REPO, capture_output=True, text=True, check=True
    )
    return yaml.safe_load(out.stdout.strip().splitlines()[-1])


def load_snapshot() -> dict[str, Any]:
    return yaml.safe_load(SNAPSHOT.read_text(encoding="utf-8"))


def _resolve(rule: Any, release: str) -> str | None:
    """What a rosdep rule installs on Ubuntu `release` ('apt pkg', 'pip pkg'), None where it resolves to nothing."""
    if isinstance(rule, dict) and "ubuntu" in rule:
        rule = rule["ubuntu"]
    elif isinstance(rule, dict):
        return None  # no ubuntu entry
    if isinstance(rule, dict):
        if "pip" in rule:
            return "pip " + " ".join(rule["pip"]["packages"])
        rule = rule.get(release, rule.get("*"))
        if isinstance(rule, dict):  # installer-keyed: {apt: {packages: [...]}} or {pip: {packages: [...]}}
            (installer, spec), *_ = rule.items()
            return f"{installer} " + " ".join(spec["packages"])
    if isinstance(rule, list) and rule:
        return "apt " + " ".join(rule)
    return None


def _released(distribution: dict[str, Any]) -> set[str]:
    packages: set[str] = set()
    for name, repository in (distribution.get("repositories") or {}).items():
        release = repository.get("release")
        if release:
            packages.update(release.get("packages") or [name])
    return packages


def update(rosdistro: Path) -> None:
    """Rewrite the snapshot from a rosdistro clone, for every key package.xml and setup.py name."""
    rules: dict[str, Any] = {}
    for name in ("base.yaml", "python.yaml"):
        rules.update(yaml.safe_load((rosdistro / "rosdep" / name).read_text(encoding="utf-8")))
    released = {
        distro: _released(yaml.safe_load((rosdistro / distro / "distribution.yaml").read_text(encoding="utf-8")))
        for distro in DISTRIBUTIONS
    }
    keys = {key for group in package_xml_keys().values() for key in group}
    keys |= {rosdep_key(r) for group in setup_requirements().values() for r in group}
    system: dict[str, Any] = {}
    ros: dict[str, list[str]] = {}
    for key in sorted(keys):
        if key in rules:
            system[key] = {release: _resolve(rules[key], release) for release in sorted(set(DISTRIBUTIONS.values()))}
        elif any(key in packages for packages in released.values()):
            ros[key] = [distro for distro in DISTRIBUTIONS if key in released[distro]]
        else:
            system[key] = None
    commit = subprocess.run(
        ["git", "-C", str(rosdistro), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    header = (
        "# Vendored snapshot of the rosdep keys package.xml and setup.py name (test/rosdep_keys.py explains; do not\n"
        "# edit by hand). system: key -> what it installs per Ubuntu release (null: not a rosdep key there);\n"
        "# ros: ROS package -> the distributions that release it.\n"
    )
    body = yaml.safe_dump({"rosdistro_commit": commit or "unknown", "system": system, "ros": ros}, sort_keys=False)
    SNAPSHOT.write_text(header + body, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: test/rosdep_keys.py ROSDISTRO_CLONE")
    update(Path(sys.argv[1]))
    print(f"wrote {SNAPSHOT}")
