"""Helpers for tests that drive Debian peer binaries (promtool, amtool, prometheus, chromium)."""

from __future__ import annotations

import shutil

import pytest


def require_binary(name: str) -> str:
    """Path of `name` on PATH, or skip the test saying which Debian package provides it."""
    path = shutil.which(name)
    if path is None:
        package = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}.get(name, name)
        pytest.skip(f"{name} not found on PATH (apt-get install {package})")
    return path
