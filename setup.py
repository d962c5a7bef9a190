"""ament_python package setup; `pip install .` works without ROS (the aggregator host)."""

from __future__ import annotations

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "tvm_observability"


def _tree(root: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install every file under root into share/<package>/root."""
    entries: list[tuple[str, list[str]]] = []
    for directory, _dirs, files in os.walk(root):
        if files:
            entries.append(
                (os.path.join("share", PACKAGE, directory), [os.path.join(directory, f) for f in sorted(files)])
            )
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        *_tree("config"),
    ],
    python_requires=">=3.10",
    # Lower bounds are what ROS 2 Humble's apt packages provide (the bridge runs on them); the aggregator
    # checks at start that it has aiohttp>=3.9, prometheus-client>=0.17 (tvm_observability/aggregator/__init__.py).
    install_requires=[
        "aiohttp>=3.8",
        "msgpack>=1.0",
        "pyyaml>=5.4",
        "prometheus-client>=0.9",
        "python-json-logger>=2.0",
    ],
    zip_safe=True,
    maintainer="tvm_observability maintainers",
    maintainer_email="maintainers@tvm-observability.invalid",
    description="Fleet telemetry: vehicle_bridge ROS 2 node and telemetry_aggregator Prometheus service.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "telemetry_aggregator = tvm_observability.aggregator.cli:main",
            "vehicle_bridge = tvm_observability.bridge.node:main",
            "vehicle_simulator = tvm_observability.sim.simulator:main",
        ],
    },
)
