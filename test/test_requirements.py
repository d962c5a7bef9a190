"""The aggregator refuses, with a clear message, library versions too old for it (Humble's apt ones)."""

from __future__ import annotations

import importlib.metadata

import pytest

from tvm_observability import aggregator


def test_release_parsing() -> None:
    assert aggregator._release("3.8.1") == (3, 8)
    assert aggregator._release("0.17.1") == (0, 17)
    assert aggregator._release("3.10.0rc1") == (3, 10)
    assert aggregator._release("2") == (2,)


def test_installed_versions_pass() -> None:
    aggregator._check_requirements()


def test_too_old_libraries_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"aiohttp": "3.8.1", "prometheus-client": "0.9.0", "python-json-logger": "2.0.2"}
    monkeypatch.setattr(aggregator, "version", versions.__getitem__)
    with pytest.raises(ImportError) as info:
        aggregator._check_requirements()
    message = str(info.value)
    assert "aiohttp>=3.9 (found 3.8.1)" in message and "prometheus-client>=0.17 (found 0.9.0)" in message
    assert "python-json-logger" not in message


def test_missing_library_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(aggregator, "version", missing)
    with pytest.raises(ImportError, match="found 0"):
        aggregator._check_requirements()
