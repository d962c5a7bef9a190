"""Config keys of the reliability/security work: tls, read_auth, body and idle timeouts; reload bookkeeping."""

from __future__ import annotations

import pytest

from tvm_observability.aggregator.config import ConfigError, ReadAuth, TlsConfig, parse_config
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.auth import hash_token

HEX = hash_token("x")


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"auth_required": False, **data})
    return caught.value.problems


def test_defaults_are_off_and_timeouts_set() -> None:
    config = parse_config({"auth_required": False})
    assert config.tls is None and config.read_auth is None
    assert config.limits.body_timeout_s == 10.0 and config.limits.idle_timeout_s == 75.0


def test_tls_and_read_auth_parse(tmp_path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    config = parse_config(
        {
            "auth_required": False,
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "read_auth": {"basic_username": "prometheus", "basic_password_sha256": HEX},
            "limits": {"body_timeout_s": 0.5, "idle_timeout_s": 5},
        }
    )
    assert config.tls == TlsConfig(str(cert), str(key))
    assert config.read_auth == ReadAuth(basic_username="prometheus", basic_password_sha256=HEX)
    assert config.limits.body_timeout_s == 0.5 and config.limits.idle_timeout_s == 5.0


def test_every_problem_of_the_new_sections_is_reported_together(tmp_path) -> None:
    problems = problems_of(
        {
            "tls": {"cert_file": str(tmp_path / "missing.pem"), "key_file": 3, "ca": "x"},
            "read_auth": {"bearer_token_sha256": "NOT-HEX", "basic_username": "a:b"},
            "limits": {"body_timeout_s": 0, "idle_timeout_s": "long"},
        }
    )
    text = "\n".join(problems)
    for expected in (
        "tls.cert_file: cannot read",
        "tls.key_file: must be the path of a PEM file",
        "tls.ca: unknown key",
        "read_auth.bearer_token_sha256: must be 64 lowercase hex",
        "read_auth.basic_username: must be a non-empty string without ':'",
        "read_auth: basic_username and basic_password_sha256 go together",
        "limits.body_timeout_s: must be a number >= 0.1",
        "limits.idle_timeout_s: must be a number >= 0.5",
    ):
        assert expected in text, (expected, problems)


@pytest.mark.parametrize("value", [{}, "yes", []])
def test_empty_or_wrong_sections_are_refused(value) -> None:
    assert problems_of({"read_auth": value})
    assert problems_of({"tls": value})


def test_fleet_reconfigure_adds_drops_and_keeps_counts() -> None:
    fleet = FleetState(["V1", "V2"], FleetSettings(statuses=("idle",), offline_after_s=15.0, max_unknown_vehicles=0))
    added, dropped = fleet.reconfigure(
        ["V1", "V3"],
        FleetSettings(
            statuses=("idle", "docked"), offline_after_s=5.0, max_error_code_series=8, max_unknown_vehicles=0
        ),
    )
    assert (added, dropped) == (["V3"], ["V2"])
    assert sorted(v.vehicle_id for v in fleet) == ["V1", "V3"]
    assert fleet.is_known_status("docked") and fleet.offline_after_s == 5.0
    # With unknown vehicles allowed, a dropped vehicle stays (its counters with it), off the roster.
    fleet.reconfigure(
        ["V3"], FleetSettings(statuses=("idle",), offline_after_s=5.0, max_error_code_series=8, max_unknown_vehicles=10)
    )
    v1 = fleet.get("V1")
    assert v1 is not None and not v1.on_roster
    fleet.reconfigure(
        ["V1", "V3"],
        FleetSettings(statuses=("idle",), offline_after_s=5.0, max_error_code_series=8, max_unknown_vehicles=10),
    )
    assert fleet.get("V1").on_roster
