"""Refusal reasons: each defined once, with its status, by its error class; the exported list and the protocol
document follow from that one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tvm_observability.errors import REFUSALS, REJECTION_REASONS, SchemaError, TelemetryError

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "telemetry-protocol.md"


def test_every_reason_is_documented_with_its_status() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    table = text[text.index("| HTTP | `reason` | cause |") :]
    rows = re.findall(r"^\| (\d{3}) \| ([^|]+) \|", table, re.MULTILINE)
    documented = {(reason, int(status)) for status, cell in rows for reason in re.findall(r"`([a-z_]+)`", cell)}
    assert documented == {(reason, cls.status) for reason, cls in REFUSALS.items()}
    assert tuple(REFUSALS) == REJECTION_REASONS and "stale_boot" in REJECTION_REASONS


def test_a_reason_cannot_be_defined_twice() -> None:
    with pytest.raises(TypeError, match="already SchemaError's"):

        class AnotherSchemaError(TelemetryError):
            reason = "schema"

    assert REFUSALS["schema"] is SchemaError


def test_subclasses_keep_their_group_and_their_own_reason() -> None:
    for reason, cls in REFUSALS.items():
        error = cls("detail")
        assert error.reason == reason and error.to_json() == {"error": reason, "detail": "detail"}
        assert 400 <= error.status < 500
