"""Config: validated once, every problem named in one error; exposure beyond loopback needs credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tvm_observability.aggregator.config import (
    ConfigError,
    default_config,
    is_loopback,
    load_config,
    parse_config,
    parse_listen,
)
from tvm_observability.auth import hash_token

HASH = hash_token("secret-token")
HASH2 = hash_token("another-token")


def test_full_config_parses(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        f"""
listen: 0.0.0.0:9200
offline_after_s: 30
state_file: /var/lib/tvm-observability/state.msgpack
statuses: [idle, on_mission, charging]
limits: {{max_body_bytes: 8192, max_sensors_per_vehicle: 8, rate_limit_per_vehicle_hz: 2}}
vehicles:
  V1: {{token_sha256: "{HASH}"}}
  V-2.b: {{token_sha256: "{HASH2}"}}
log_level: debug
environment: staging
""",
        encoding="utf-8",
    )
    config = load_config(path)
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9200)
    assert config.offline_after_s == 30.0 and config.state_file == "/var/lib/tvm-observability/state.msgpack"
    assert config.statuses == ("idle", "on_mission", "charging")
    assert config.limits.max_body_bytes == 8192 and config.limits.max_error_codes_per_vehicle == 64
    assert config.limits.max_error_codes_per_push == 64 and config.limits.max_sensor_series_per_vehicle == 64
    assert set(config.vehicles) == {"V1", "V-2.b"} and config.vehicles["V1"].token_sha256 == HASH
    assert config.auth_required and not config.allow_unknown_vehicles


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
listen: nowhere
offline_after_s: -1
state_file: 7
allow_unknown_vehicles: "yes"
statuses: [idle, offline]
limits: {max_body_bytes: 10, bogus: 1}
vehicles:
  "bad id": {}
  V1: {token_sha256: "not-hex"}
  V2: {token: "plain"}
log_level: loud
colour: blue
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    for key in (
        "listen:",
        "offline_after_s:",
        "state_file:",
        "allow_unknown_vehicles:",
        "statuses:",
        "limits.max_body_bytes:",
        "limits.bogus: unknown key",
        "vehicles.bad id:",
        "vehicles.V1.token_sha256:",
        "vehicles.V2.token: unknown key",
        "log_level:",
        "colour: unknown key",
    ):
        assert key in text, key
    assert str(path) in text


def test_non_loopback_without_credentials_is_refused() -> None:
    with pytest.raises(ConfigError, match="reachable from other machines"):
        parse_config({"listen": "0.0.0.0:9100", "auth_required": False})
    with pytest.raises(ConfigError, match="reachable from other machines"):
        default_config(listen="192.0.2.10:9100")
    assert default_config(listen="127.0.0.2:9100").listen_host == "127.0.0.2"
    assert str(default_config(listen="[::1]:9100").listen) == "[::1]:9100"


def test_listen_flag_beats_file() -> None:
    config = parse_config({"listen": "127.0.0.1:9100", "vehicles": {"V1": {"token_sha256": HASH}}}, listen="0.0.0.0:0")
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 0)


def test_embedded_default_is_open_but_loopback_only() -> None:
    config = default_config()
    assert str(config.listen) == "127.0.0.1:9100"
    assert not config.auth_required and config.allow_unknown_vehicles and config.state_file is None


def test_credentials_required_for_roster_and_unknowns() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"vehicles": {"V1": None}, "allow_unknown_vehicles": True})
    assert "vehicles.V1.token_sha256: required" in str(info.value)
    assert "allow_unknown_vehicles" in str(info.value)
    open_config = parse_config({"auth_required": False, "vehicles": {"V1": None}, "allow_unknown_vehicles": True})
    assert open_config.vehicles["V1"].token_sha256 is None


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9100", ":9100", "host:port", "h:70000", 9100])
def test_parse_listen_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("example.org")


# -- one token per vehicle, one value per key (issue 10, item 9) ------------------------------------------


def test_two_roster_vehicles_with_the_same_token_hash_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"vehicles": {"V1": {"token_sha256": HASH}, "V2": {"token_sha256": HASH}, "V3": None}})
    assert info.value.problems[0].startswith("vehicles.V2.token_sha256: the same token hash as vehicles.V1")
    # every problem still reported together: V3 has no token at all
    assert any(p.startswith("vehicles.V3.token_sha256: required") for p in info.value.problems)


def test_a_vehicle_token_that_is_also_a_read_credential_is_refused() -> None:
    """One secret on a vehicle would otherwise read the whole fleet, positions included."""
    for read_auth in ({"bearer_token_sha256": HASH}, {"basic_username": "prom", "basic_password_sha256": HASH}):
        with pytest.raises(ConfigError) as info:
            parse_config({"vehicles": {"V1": {"token_sha256": HASH}}, "read_auth": read_auth})
        assert info.value.problems == [
            "vehicles.V1.token_sha256: the same hash as a read_auth credential: the vehicle's token would read "
            "the whole fleet (positions included); give each its own secret"
        ]


def test_trusted_proxies_must_not_trust_every_address() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"vehicles": {"V1": {"token_sha256": HASH}}, "trusted_proxies": ["10.0.0.0/8", "0.0.0.0/0", "::/0"]}
        )
    assert [p.split(":")[0] for p in info.value.problems] == ["trusted_proxies", "trusted_proxies"]
    assert all("trusts every address" in p for p in info.value.problems)


def test_a_certificate_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A FIFO blocked --check-config, and a SIGHUP reload froze the event loop, until someone wrote to it."""
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"listen": "127.0.0.1:0", "auth_required": False, "tls": {"cert_file": str(fifo), "key_file": str(fifo)}}
        )
    assert info.value.problems == [
        f"tls.cert_file: {fifo} is not a regular file",
        f"tls.key_file: {fifo} is not a regular file",
    ]
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)  # the config file itself


def test_a_key_written_twice_is_refused_with_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        f"""auth_required: true
vehicles:
  V1: {{token_sha256: "{HASH}"}}
  V1: {{token_sha256: "{HASH2}"}}
limits:
  rate_limit_burst: 5
  rate_limit_burst: 500
auth_required: false
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"line {line}: key '{key}' written twice (first at line {first}); YAML would keep only the last value"
        for line, key, first in ((4, "V1", 3), (7, "rate_limit_burst", 6), (8, "auth_required", 1))
    ]
