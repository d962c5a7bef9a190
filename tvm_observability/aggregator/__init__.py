"""The central telemetry_aggregator service: ingest, fleet state, Prometheus exposition.

The package's install_requires are loose enough for the ROS apt packages on a Humble robot (which
runs only the bridge); the aggregator itself needs newer libraries, checked here with a clear message.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

AGGREGATOR_REQUIRES = {"aiohttp": (3, 9), "prometheus-client": (0, 17), "python-json-logger": (2, 0)}


def _release(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _check_requirements() -> None:
    too_old = []
    for name, minimum in AGGREGATOR_REQUIRES.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "0"
        if _release(installed) < minimum:
            too_old.append(f"{name}>={'.'.join(map(str, minimum))} (found {installed})")
    if too_old:
        raise ImportError(
            "telemetry_aggregator needs " + ", ".join(too_old) + "; install them with pip, e.g. "
            "`pip install --upgrade " + " ".join(f"'{n.split(' ')[0]}'" for n in too_old) + "`"
        )


_check_requirements()
