"""Bridge parameter validation (pure: the node hands the declared values to parse_params)."""

from __future__ import annotations

import os

import pytest

from tvm_observability.bridge.params import (
    PARAMETERS,
    ParamError,
    default_values,
    parse_params,
    read_token,
    update_params,
)


def values(**overrides):
    base = default_values()
    base["vehicle_id"] = "V5"
    base.update(overrides)
    return base


def test_defaults_with_a_vehicle_id_are_valid():
    params = parse_params(values())
    assert params.telemetry_url == "http://127.0.0.1:9100/api/v1/telemetry"
    assert params.topics.battery == "battery_state" and params.topics.diagnostics == "/diagnostics"
    assert params.publish_period_s == 1.0
    assert params.builder.sensors == ()


def test_every_problem_is_reported_together():
    with pytest.raises(ParamError) as info:
        parse_params(values(vehicle_id="", aggregator_url="ftp://x", publish_period_s=0.0, backoff_max_s=0.1))
    text = str(info.value)
    for fragment in ("vehicle_id: required", "aggregator_url:", "publish_period_s:", "backoff_max_s:"):
        assert fragment in text


@pytest.mark.parametrize(
    "url", ["http://", "https://user:pw@host", "http://host:99999", "http://host/?q=1", "host:9100", 5]
)
def test_bad_urls(url):
    with pytest.raises(ParamError, match="aggregator_url"):
        parse_params(values(aggregator_url=url))


def test_base_path_and_https():
    assert parse_params(values(aggregator_url="https://fleet.example/telemetry/")).telemetry_url == (
        "https://fleet.example/telemetry/api/v1/telemetry"
    )


def test_sensors_from_flat_parameters():
    params = parse_params(
        values(
            sensors=["lidar", "imu"],
            **{
                "sensor.lidar.topic": "scan",
                "sensor.lidar.type": "sensor_msgs/msg/LaserScan",
                "sensor.lidar.min_rate_hz": 5.0,
                "sensor.lidar.diagnostic_prefix": "lidar",
                "sensor.imu.topic": "",
                "sensor.imu.type": "",
                "sensor.imu.min_rate_hz": 1.0,
                "sensor.imu.diagnostic_prefix": "imu",
            },
        )
    )
    lidar, imu = params.builder.sensors
    assert (lidar.name, lidar.topic, lidar.message_type, lidar.min_rate_hz) == (
        "lidar",
        "scan",
        "sensor_msgs/msg/LaserScan",
        5.0,
    )
    assert (imu.topic, imu.diagnostic_prefix, imu.min_rate_hz) == ("", "imu", 0.0)


def test_sensor_problems():
    with pytest.raises(ParamError) as info:
        parse_params(
            values(
                sensors=["a", "a", "b.c", "d"],
                **{"sensor.a.topic": "x", "sensor.a.type": "LaserScan", "sensor.a.min_rate_hz": 1.0},
            )
        )
    text = str(info.value)
    assert "sensor.a.type: must be a type like" in text
    assert "'a' is listed twice" in text
    assert "'b.c' is not a valid sensor name" in text
    assert "sensor.d: needs a topic or a diagnostic_prefix" in text


def test_ca_file_needs_https(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ParamError, match="ca_file: set, but aggregator_url is not https"):
        parse_params(values(ca_file=str(ca)))


def test_token_file_permissions_warn(tmp_path):
    token = tmp_path / "token"
    token.write_text("abc\n")
    os.chmod(token, 0o644)
    value, warning = read_token(str(token))
    assert value == "abc"
    assert warning is not None and "chmod 600" in warning and "abc" not in warning
    os.chmod(token, 0o600)
    assert read_token(str(token)) == ("abc", None)
    token.write_text("two words\n")
    with pytest.raises(ParamError, match="exactly one token"):
        read_token(str(token))


def _flatten(mapping, prefix=""):
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_shipped_config_documents_every_parameter_and_is_valid():
    import yaml
    from support import REPO

    text = (REPO / "config" / "vehicle_bridge.yaml").read_text(encoding="utf-8")
    params = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert sorted(k for k in params if k != "sensor") == sorted(spec.name for spec in PARAMETERS)
    for spec in PARAMETERS:
        # The shipped file turns the journal on (the node's default, for a bridge off-robot, is off).
        assert params[spec.name] == spec.default or spec.name in ("sensors", "journal_dir"), spec.name
    assert params["journal_dir"]
    flat = _flatten(params)
    flat["vehicle_id"] = "V5"
    parsed = parse_params(flat)
    assert [s.name for s in parsed.builder.sensors] == ["lidar", "camera", "imu", "gps"]


def test_token_file_that_is_a_directory(tmp_path):
    with pytest.raises(ParamError, match="token_file: cannot read"):
        read_token(str(tmp_path))


def test_runtime_update_validates_with_the_running_values():
    running = values(publish_period_s=1.0)
    assert update_params(running, {"publish_period_s": 0.5, "link_error_after_s": 4}).publish_period_s == 0.5
    with pytest.raises(ParamError) as info:
        update_params(running, {"publish_period_s": 0.5, "vehicle_id": "V6", "sensor.lidar.topic": "scan2"})
    assert info.value.problems == [
        "vehicle_id: restart-only; set it in the params file and restart",
        "sensor.lidar.topic: restart-only; set it in the params file and restart",
    ]
    with pytest.raises(ParamError, match="publish_period_s: must be"):
        update_params(running, {"publish_period_s": 0})


def test_the_bridge_doc_lists_exactly_the_runtime_parameters():
    import re

    from support import REPO

    text = (REPO / "docs" / "vehicle-bridge.md").read_text(encoding="utf-8")
    block = text.split("<!-- runtime parameters: begin -->")[1].split("<!-- runtime parameters: end -->")[0]
    assert re.findall(r"`([a-z_]+)`", block) == [spec.name for spec in PARAMETERS if spec.runtime]


def test_a_second_aggregator_is_optional_and_checked_like_the_first():
    assert parse_params(values()).telemetry_urls == ("http://127.0.0.1:9100/api/v1/telemetry",)
    both = parse_params(values(second_aggregator_url="http://127.0.0.1:9101/"))
    assert both.telemetry_urls == (
        "http://127.0.0.1:9100/api/v1/telemetry",
        "http://127.0.0.1:9101/api/v1/telemetry",
    )
    with pytest.raises(ParamError) as info:
        parse_params(values(second_aggregator_url="ftp://x"))
    assert "second_aggregator_url: must be an http:// or https:// URL" in str(info.value)
    with pytest.raises(ParamError, match="second_aggregator_url: the same as aggregator_url"):
        parse_params(values(second_aggregator_url="http://127.0.0.1:9100"))
    with pytest.raises(ParamError, match="second_aggregator_url: must not carry credentials"):
        parse_params(values(second_aggregator_url="http://user:pw@127.0.0.1:9101"))


def test_journal_is_off_by_default_and_per_vehicle_below_the_ros_home(monkeypatch, tmp_path):
    assert parse_params(values()).journal is None
    monkeypatch.setenv("ROS_HOME", str(tmp_path))
    journal = parse_params(values(journal_dir="tvm_observability/journal", aggregator_url="https://a.example:9443/"))
    assert journal.journal is not None
    assert journal.journal.directory == str(tmp_path / "tvm_observability" / "journal" / "V5")
    assert journal.journal.history_url == "https://a.example:9443/api/v1/telemetry/history"
    absolute = parse_params(values(journal_dir="/var/lib/bridge")).journal
    assert absolute is not None and absolute.directory == "/var/lib/bridge/V5"


def test_journal_problems_are_reported_together():
    with pytest.raises(ParamError) as info:
        parse_params(
            values(
                journal_dir=3,
                journal_max_bytes=10,
                journal_max_age_s=-1.0,
                backlog_max_snapshots_per_s=0.0,
                journal_downsample_after_s=1.0,
                journal_downsample_keep_every=0,
            )
        )
    text = str(info.value)
    for fragment in (
        "journal_dir:",
        "journal_max_bytes:",
        "journal_max_age_s:",
        "backlog_max_snapshots_per_s:",
        "journal_downsample_after_s:",
        "journal_downsample_keep_every:",
    ):
        assert fragment in text


def test_old_backlog_downsampling_parameters():
    journal = parse_params(values(journal_dir="/var/lib/bridge")).journal
    assert journal is not None and (journal.downsample_after_s, journal.downsample_keep_every) == (3600.0, 10)
    off = parse_params(values(journal_dir="/var/lib/bridge", journal_downsample_keep_every=1)).journal
    assert off is not None and off.downsample_keep_every == 1
    with pytest.raises(ParamError, match="journal_downsample_keep_every"):
        parse_params(values(journal_dir="/var/lib/bridge", journal_downsample_keep_every=2.5))


def test_client_settings_are_built_once_from_the_parameters():
    params = parse_params(
        values(
            journal_dir="/var/lib/bridge",
            second_aggregator_url="http://b.example:9100",
            request_timeout_s=3.0,
            backoff_max_s=8.0,
        )
    )
    first, second = params.live_clients("tok")
    assert (first.url, second.url) == params.telemetry_urls
    assert first.vehicle_id == "V5" and first.token == "tok" and first.request_timeout_s == 3.0
    assert first.backoff_max_s == 8.0 and "tok" not in repr(first)  # the token is never logged with its settings
    backlog = params.backlog_client(None)
    assert backlog is not None and params.journal is not None
    assert backlog.url == params.journal.history_url and backlog.token is None
    assert backlog.request_timeout_s == 10.0 and backlog.backoff_max_s == 30.0  # the backlog is never urgent
    assert parse_params(values()).backlog_client("tok") is None  # no journal, no uploader
