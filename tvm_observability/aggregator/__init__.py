"""The central telemetry_aggregator service: ingest, fleet state, Prometheus exposition.

AGGREGATOR_REQUIRES lists, once, the libraries the aggregator needs beyond the shared code and their lowest
versions: setup.py turns it into the `aggregator` extra (`pip install .[aggregator]` on the server), and
`telemetry_aggregator` checks it at start-up (`check_requirements`), before anything else, with a clear message.
A robot installs only the bridge's dependencies (package.xml), which Humble's apt packages satisfy; these are
newer than Ubuntu 22.04 has, or not packaged there at all.

Importing this package checks nothing. setup.py loads this file on its own, so it imports only the standard
library.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

AGGREGATOR_REQUIRES = {
    "aiohttp": "3.9",
    "prometheus-client": "0.17",
    "python-json-logger": "2.0",
    "pyyaml": "5.4",
    "msgspec": "0.19",  # decodes pushes into frozen dataclasses from 0.19 on (ingest.decode_fast)
}
"""pip name -> lowest version the aggregator runs with."""


def requirement_specifiers() -> list[str]:
    """AGGREGATOR_REQUIRES as pip requirement strings ('aiohttp>=3.9', ...)."""
    return [f"{name}>={minimum}" for name, minimum in AGGREGATOR_REQUIRES.items()]


def _release(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_requirements() -> None:
    """Exit (SystemExit, status 1) naming every library missing or older than AGGREGATOR_REQUIRES asks."""
    too_old = []
    for name, minimum in AGGREGATOR_REQUIRES.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "none"
        if installed == "none" or _release(installed) < _release(minimum):
            too_old.append(f"{name}>={minimum} (found {installed})")
    if too_old:
        raise SystemExit(
            "telemetry_aggregator needs " + ", ".join(too_old) + ": run it from a virtual environment with "
            "`pip install '.[aggregator]'` in this repository's checkout (docs/operations.md)"
        )
