"""End to end with real processes: publishers -> vehicle_bridge process -> aggregator process -> /metrics.

Each test runs on its own ROS domain (ros_env). The publishers are a real rclpy node in the test
process (FakeVehicle), so the values and error events are known exactly.
"""

from __future__ import annotations

import signal

import pytest
from bridge_support import BridgeProcess, FakeVehicle, HangingServer, free_port, write_bridge_params, write_token
from support import AggregatorProcess, sample, scrape, wait_for
from test_bridge_faults import assert_node_never_waited_on_the_network

pytestmark = pytest.mark.ros


@pytest.fixture
def vehicle(ros_env):
    fake = FakeVehicle()
    yield fake
    fake.close()


@pytest.fixture
def setup(tmp_path, fleet_tokens, write_config):
    """Aggregator config (offline after 2 s) and the V1 bridge's params and token file."""
    config = write_config(fleet_tokens, offline_after_s=2)
    token_file = write_token(tmp_path / "v1.token", fleet_tokens["V1"])

    def bridge(env, url: str, name: str = "bridge.yaml", **overrides) -> BridgeProcess:
        params = write_bridge_params(
            tmp_path / name, vehicle_id="V1", aggregator_url=url, token_file=str(token_file), **overrides
        )
        return BridgeProcess(env, params)

    return config, bridge


def metric(url: str, name: str, **labels: str) -> float | None:
    return sample(scrape(url), name, vehicle_id="V1", **labels)


def wait_metric(url: str, name: str, value: float, timeout: float = 30.0, **labels: str) -> None:
    wait_for(lambda: metric(url, name, **labels) == value, timeout, what=f"{name}{labels} == {value}")


def errors_total(url: str, code: str) -> float | None:
    return metric(url, "vehicle_errors_total", error_code=code)


def test_snapshot_reaches_metrics_and_vehicle_goes_offline_when_bridge_stops(ros_env, vehicle, setup):
    config, make_bridge = setup
    vehicle.publish_camera = True
    with AggregatorProcess(config) as agg, make_bridge(ros_env, agg.url) as bridge:
        wait_metric(agg.url, "vehicle_status", 1.0, status="on_mission")
        wait_metric(agg.url, "vehicle_sensor_status", 1.0, sensor="camera", status="ok")
        samples = scrape(agg.url)
        assert sample(samples, "vehicle_battery_level", vehicle_id="V1") == pytest.approx(76.5, abs=1e-3)
        assert sample(samples, "vehicle_battery_voltage_volts", vehicle_id="V1") == pytest.approx(25.2, abs=1e-3)
        assert sample(samples, "vehicle_latitude", vehicle_id="V1") == pytest.approx(52.52)
        assert sample(samples, "vehicle_longitude", vehicle_id="V1") == pytest.approx(13.405)
        assert sample(samples, "vehicle_pose_x_meters", vehicle_id="V1") == pytest.approx(12.5)
        assert sample(samples, "vehicle_speed_meters_per_second", vehicle_id="V1") == pytest.approx(0.8)
        assert sample(samples, "vehicle_sensor_status", vehicle_id="V1", sensor="lidar", status="ok") == 1.0
        # The measured rate settles over the bridge's rate window; on a loaded machine the first scrapes may
        # still see it rising: wait for it rather than assert it at the first scrape.
        wait_for(
            lambda: (metric(agg.url, "vehicle_sensor_rate_hertz", sensor="lidar") or 0.0) >= 2.0,
            30,
            what="the lidar's measured rate to reach 2 Hz",
        )

        # Error events: once per entry into ERROR, coded or by fallback (the sensor's name).
        vehicle.error_event("camera: driver", "CAM_USB")
        vehicle.error_event("camera: driver", "CAM_USB")
        vehicle.set_diagnostic("lidar: motor", 2)  # held in ERROR: one event, however long
        wait_for(lambda: errors_total(agg.url, "CAM_USB") == 2.0, 30, what="CAM_USB == 2")
        wait_metric(agg.url, "vehicle_sensor_status", 1.0, sensor="lidar", status="error")
        assert errors_total(agg.url, "lidar") == 1.0

        # Camera driver dies: the sensor goes stale from message rate alone.
        vehicle.publish_camera = False
        wait_metric(agg.url, "vehicle_sensor_status", 1.0, sensor="camera", status="stale")
        # Unknown status text.
        vehicle.status = "dancing"
        wait_metric(agg.url, "vehicle_status", 1.0, status="unknown")

        assert bridge.stop(signal.SIGTERM) == 0
        wait_metric(agg.url, "vehicle_up", 0.0)
        samples = scrape(agg.url)
        assert sample(samples, "vehicle_status", vehicle_id="V1", status="offline") == 1.0
        assert sample(samples, "vehicle_errors_total", vehicle_id="V1", error_code="CAM_USB") == 2.0
    assert "reported as unknown (logged once)" in bridge.output
    assert bridge.output.count("'dancing' is not in the configured statuses") == 1


def test_outages_at_start_and_mid_run_lose_no_error_event(ros_env, vehicle, setup):
    config, make_bridge = setup
    port = free_port()
    agg = AggregatorProcess(config, listen=f"127.0.0.1:{port}")
    with make_bridge(ros_env, f"http://127.0.0.1:{port}") as bridge:
        # Aggregator not running at bridge start: events happen anyway.
        wait_for(lambda: vehicle.bridge_health, 30, what="bridge health on /diagnostics")
        vehicle.error_event("camera: driver", "CAM_USB")
        vehicle.error_event("camera: driver", "CAM_USB")
        wait_for(lambda: vehicle.latest_health().get("error_events") == "2", 30, what="bridge counted 2 events")
        wait_for(lambda: vehicle.bridge_health[-1][2] == 2, 30, what="bridge link ERROR while down")
        rss_before = bridge.rss_kib()
        with agg:
            wait_for(lambda: errors_total(agg.url, "CAM_USB") == 2.0, 30, what="CAM_USB == 2 after start")
            agg.kill()
            vehicle.error_event("camera: driver", "CAM_USB")
            wait_for(lambda: vehicle.latest_health().get("error_events") == "3", 30, what="bridge counted 3")
            agg.start()
            wait_for(lambda: errors_total(agg.url, "CAM_USB") == 3.0, 30, what="CAM_USB == 3 after restart")
            wait_for(lambda: vehicle.bridge_health[-1][2] == 0, 30, what="bridge link OK again")
        rss_after = bridge.rss_kib()
        assert bridge.stop() == 0
    lateness = [float(values["max_tick_lateness_s"]) for _, values, _ in vehicle.bridge_health]  # measured only
    assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)
    print(f"outages: max tick lateness {max(lateness):.3f} s, RSS {rss_before} -> {rss_after} KiB")


def test_hanging_aggregator_never_blocks_the_node(ros_env, vehicle, setup):
    config, make_bridge = setup
    hanging = HangingServer()
    port = hanging.port
    try:
        with make_bridge(ros_env, f"http://127.0.0.1:{port}", request_timeout_s=3.0) as bridge:
            wait_for(lambda: len(vehicle.bridge_health) >= 4, 30, what="bridge health while hanging")
            rss_before = bridge.rss_kib()
            start = len(vehicle.bridge_health)
            vehicle.error_event("camera: driver", "CAM_USB")
            wait_for(lambda: vehicle.latest_health().get("error_events") == "1", 30, what="event counted")
            # Twenty more health reports (10 s at 0.5 s) while each push hangs until its 3 s timeout.
            wait_for(lambda: len(vehicle.bridge_health) >= start + 20, 120, what="health keeps coming")
            rss_after = bridge.rss_kib()
            during = vehicle.bridge_health[start:]
            assert int(during[-1][1]["pushes_accepted"]) == 0
            assert int(during[-1][1]["pushes_failed"]) >= 2
            assert len(hanging.accepted) >= 1
            lateness, gap = assert_node_never_waited_on_the_network(during)
            assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)
            print(
                f"hanging: max tick lateness {lateness:.3f} s, max health gap {gap:.2f} s, "
                f"RSS {rss_before} -> {rss_after} KiB, {len(hanging.accepted)} connections held"
            )
            hanging.close()
            with AggregatorProcess(config, listen=f"127.0.0.1:{port}") as agg:
                wait_for(lambda: errors_total(agg.url, "CAM_USB") == 1.0, 30, what="CAM_USB == 1 after recovery")
            assert bridge.stop() == 0
    finally:
        hanging.close()


def test_bridge_restart_keeps_error_totals_monotonic_and_exact(ros_env, vehicle, setup):
    config, make_bridge = setup
    with AggregatorProcess(config) as agg:
        first = make_bridge(ros_env, agg.url).start()
        try:
            wait_metric(agg.url, "vehicle_up", 1.0)
            vehicle.error_event("camera: driver", "CAM_USB")
            vehicle.error_event("imu: driver", "IMU_TIMEOUT")
            wait_for(lambda: errors_total(agg.url, "IMU_TIMEOUT") == 1.0, 30, what="IMU_TIMEOUT == 1")
            assert errors_total(agg.url, "CAM_USB") == 1.0
        finally:
            assert first.stop() == 0
        with make_bridge(ros_env, agg.url) as second:
            wait_for(lambda: metric(agg.url, "vehicle_bridge_restarts_total") == 1.0, 30, what="restart seen")
            assert second.boot_id() != first.boot_id()
            # The new boot starts counting at zero; the total must not drop.
            assert errors_total(agg.url, "CAM_USB") == 1.0
            vehicle.error_event("camera: driver", "CAM_USB")
            wait_for(lambda: errors_total(agg.url, "CAM_USB") == 2.0, 30, what="CAM_USB == 2")
            assert errors_total(agg.url, "IMU_TIMEOUT") == 1.0
            assert second.stop() == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vehicle_id": ""}, "vehicle_id: required"),
        ({"token_file": "/nonexistent/v1.token"}, "token_file: cannot read"),
        ({"aggregator_url": "ftp://aggregator"}, "aggregator_url: must be an http:// or https:// URL"),
        ({"aggregator_url": "http://"}, "aggregator_url: must be an http:// or https:// URL"),
        ({"publish_period_s": -1}, "publish_period_s: must be a number"),
        (
            {"sensor": {"lidar": {"topic": "scan", "type": "sensor_msgs/msg/NoSuchScan"}}, "sensors": ["lidar"]},
            "sensor.lidar.type: unknown message type",
        ),
        (
            {"sensor": {"lidar": {"topic": "scan", "type": "LaserScan"}}, "sensors": ["lidar"]},
            "sensor.lidar.type: must be a type like",
        ),
    ],
)
def test_bad_parameters_fail_fast_with_a_clear_message(ros_env, tmp_path, overrides, message):
    token_file = write_token(tmp_path / "t", "secret-token-value")
    params = {"vehicle_id": "V1", "token_file": str(token_file), **overrides}
    bridge = BridgeProcess(ros_env, write_bridge_params(tmp_path / "p.yaml", **params)).start()
    try:
        assert bridge.wait(60) == 2, bridge.output
    finally:
        bridge.__exit__()
    assert message in bridge.output
    assert "secret-token-value" not in bridge.output
