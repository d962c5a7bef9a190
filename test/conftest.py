"""Fixtures shared by every suite. Helpers live in support.py so test modules can import them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from peers import ROS_INSTALL, require_module
from support import ros_domain

from tvm_observability.auth import generate_token, hash_token


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private ROS_DOMAIN_ID (localhost-only discovery) and ROS_HOME (ROS logs, a bridge's journal with the
    shipped parameters) for this test, in os.environ and as a dict."""
    require_module("rclpy", ROS_INSTALL)
    with ros_domain() as domain:
        env = {**domain, "ROS_HOME": str(tmp_path / "ros_home")}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield {**os.environ, **env}


@pytest.fixture
def fleet_tokens() -> dict[str, str]:
    """Fresh bearer tokens for a three-vehicle roster."""
    return {vid: generate_token() for vid in ("V1", "V2", "V3")}


@pytest.fixture
def write_config(tmp_path: Path):
    """Write an aggregator YAML config (defaults suited to tests) and return its path."""

    def write(tokens: dict[str, str] | None = None, **overrides: Any) -> Path:
        data: dict[str, Any] = {"listen": "127.0.0.1:0", "offline_after_s": 15, "environment": "test"}
        if tokens is not None:
            data["vehicles"] = {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()}
        data.update(overrides)
        path = tmp_path / "aggregator.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    return write
