"""ament_python package setup; `pip install .` works without ROS (the aggregator host)."""

from __future__ import annotations

import os
import runpy
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "tvm_observability"
HERE = os.path.dirname(os.path.abspath(__file__))
# The aggregator's libraries, listed once where telemetry_aggregator checks them at start-up.
AGGREGATOR_REQUIRES = runpy.run_path(os.path.join(HERE, PACKAGE, "aggregator", "__init__.py"))[
    "requirement_specifiers"
]()


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
    # What a robot needs (vehicle_bridge, vehicle_simulator and the shared wire contract). Lower bounds are what
    # ROS 2 Humble's apt packages provide: on a robot these come from package.xml's rosdep keys.
    install_requires=["aiohttp>=3.8", "msgpack>=1.0"],
    extras_require={
        # The server: `pip install .[aggregator]` (not packaged for Ubuntu 22.04 at these versions).
        "aggregator": AGGREGATOR_REQUIRES,
        "uvloop": ["uvloop>=0.17"],  # optional faster event loop for the aggregator (docs/benchmarks.md)
        # The test suite. colcon runs pytest (not unittest) because pytest is listed here. Those with a rosdep
        # key are package.xml test_depends too; the others are pip-only (docs/vehicle-bridge.md, Dependencies).
        "test": [
            "pytest>=8,<9",  # launch_testing's pytest plugins (colcon test, the launch test) do not work with 9
            "pytest-timeout>=2.3",
            "pytest-asyncio>=0.23",
            "pytest-aiohttp>=1.0",
            "hypothesis>=6.100",
            "cryptography>=41",  # throwaway CAs and certificates in the TLS tests
            "trustme>=1.0",
        ],
    },
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
