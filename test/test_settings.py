"""Runtime settings derived once from a config and applied in one place; a reload applies what each key's mark
allows and names the rest (issue 9, "Settings and reload")."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from support import FakeClock

from tvm_observability.aggregator.app import RUNTIME, make_app
from tvm_observability.aggregator.config import AggregatorConfig, ConfigError, ListenAddress, TlsConfig, parse_config
from tvm_observability.aggregator.fleet import FleetSettings
from tvm_observability.aggregator.ingest import IngestLimits
from tvm_observability.aggregator.ratelimit import RateSettings
from tvm_observability.aggregator.settings import derive, plan_reload
from tvm_observability.auth import hash_token

H1, H2, H3 = (hash_token(t) for t in ("t1", "t2", "t3"))


def config_of(**data: Any) -> AggregatorConfig:
    return parse_config({"vehicles": {"V1": {"token_sha256": H1}}, **data})


def test_every_runtime_setting_comes_from_one_derivation() -> None:
    config = config_of(
        offline_after_s=30,
        statuses=["idle", "docked"],
        limits={
            "max_sensors_per_vehicle": 4,
            "max_sensor_series_per_vehicle": 9,
            "max_error_codes_per_push": 5,
            "max_error_codes_per_vehicle": 7,
            "rate_limit_per_vehicle_hz": 2,
            "rate_limit_burst": 3,
        },
    )
    settings = derive(config)
    assert settings.config is config
    assert settings.fleet == FleetSettings(
        statuses=("idle", "docked"),
        offline_after_s=30.0,
        max_error_code_series=7,
        max_unknown_vehicles=0,  # unknown vehicles are not allowed: the cap is 0, whatever limits say
        max_sensor_series=9,
    )
    assert settings.ingest == IngestLimits(max_sensors=4, max_error_codes=5)
    assert settings.rate == RateSettings(rate_hz=2.0, burst=3)
    assert dict(settings.token_owner) == {H1: "V1"}


def test_the_two_error_code_policies_are_two_keys() -> None:
    """The 422 refusal of a push and the per-vehicle series budget were one key; each has its own now."""
    settings = derive(config_of(limits={"max_error_codes_per_push": 100, "max_error_codes_per_vehicle": 8}))
    assert settings.ingest.max_error_codes == 100 and settings.fleet.max_error_code_series == 8


def test_defaults_are_those_of_the_components() -> None:
    settings = derive(parse_config({"auth_required": False, "allow_unknown_vehicles": True}))
    assert settings.ingest == IngestLimits() and settings.rate == RateSettings()
    assert settings.fleet == FleetSettings()


def test_a_reload_keeps_restart_only_keys_and_names_them() -> None:
    running = config_of(environment="prod", limits={"idle_timeout_s": 75, "rate_limit_burst": 20})
    new = config_of(
        environment="staging",
        state_file="/tmp/elsewhere",
        limits={"idle_timeout_s": 5, "rate_limit_burst": 2},
        vehicles={"V1": {"token_sha256": H2}, "V2": {"token_sha256": H3}},
    )
    new = replace(new, listen=ListenAddress("127.0.0.1", 9999))
    plan = plan_reload(running, new)
    assert plan.needs_restart == ["listen", "state_file", "limits.idle_timeout_s", "environment"]
    kept = plan.config
    assert kept.listen == running.listen and kept.state_file is None and kept.environment == "prod"
    assert kept.limits.idle_timeout_s == 75.0 and kept.limits.rate_limit_burst == 2  # the rest applies
    assert set(kept.vehicles) == {"V1", "V2"} and plan.rotated == ["V1"]
    assert plan_reload(running, running).needs_restart == []


def test_turning_tls_on_or_off_waits_for_a_restart_but_a_new_pair_reloads(tmp_path) -> None:
    files = []
    for name in ("a.crt", "a.key", "b.crt", "b.key"):
        (tmp_path / name).write_text("x")
        files.append(str(tmp_path / name))
    plain = config_of()
    with_tls = replace(plain, tls=TlsConfig(files[0], files[1]))
    renewed = replace(plain, tls=TlsConfig(files[2], files[3]))
    on = plan_reload(plain, with_tls)
    assert on.needs_restart == ["tls"] and on.config.tls is None
    off = plan_reload(with_tls, plain)
    assert off.needs_restart == ["tls"] and off.config.tls == with_tls.tls
    swap = plan_reload(with_tls, renewed)
    assert swap.needs_restart == [] and swap.config.tls == renewed.tls


def test_runtime_apply_puts_every_setting_in_force() -> None:
    app = make_app(config_of(limits={"rate_limit_per_vehicle_hz": 1, "rate_limit_burst": 1}), clock=FakeClock())
    rt = app[RUNTIME]
    assert rt.limiter.settings == RateSettings(rate_hz=1.0, burst=1)
    new = config_of(
        offline_after_s=40,
        vehicles={"V2": {"token_sha256": H2}},
        limits={"rate_limit_per_vehicle_hz": 5, "rate_limit_burst": 7, "max_sensors_per_vehicle": 3},
    )
    added, dropped = rt.apply(derive(new))
    assert (added, dropped) == (["V2"], ["V1"])
    assert rt.config is new and rt.fleet.offline_after_s == 40.0
    assert rt.limiter.settings == RateSettings(rate_hz=5.0, burst=7)  # the limiter's own reconfigure
    assert rt.ingest_limits.max_sensors == 3 and dict(rt.token_owner) == {H2: "V2"}


def test_a_reload_cannot_drop_credentials_while_the_running_address_is_exposed() -> None:
    """listen waits for a restart: a file moving to loopback without credentials would otherwise open the
    running non-loopback port to any vehicle."""
    running = config_of(listen="0.0.0.0:9100")
    new = parse_config({"listen": "127.0.0.1:9100", "auth_required": False})
    with pytest.raises(ConfigError) as info:
        plan_reload(running, new)
    assert info.value.problems[0].startswith("listen: 0.0.0.0:9100 is reachable from other machines")
