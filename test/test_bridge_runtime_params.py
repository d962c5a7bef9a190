"""`ros2 param set` on a live vehicle_bridge: runtime parameters are applied, restart-only ones and invalid
values are refused with a reason and change nothing. Real rclpy: the changes go through the node's
set_parameters service, as `ros2 param set` sends them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from bridge_support import BridgeProcess, free_port, write_bridge_params

pytestmark = pytest.mark.ros
NAMESPACE = "v7"


class LiveBridge:
    """A VehicleBridge and a parameter client node in one process, spun by one executor thread."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter

        from tvm_observability.bridge.node import VehicleBridge

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        overrides = [
            Parameter("vehicle_id", value="V7"),
            Parameter("aggregator_url", value=f"http://127.0.0.1:{free_port()}"),  # nobody listens: retries
        ]
        self.bridge = VehicleBridge(context=self.context, namespace=NAMESPACE, parameter_overrides=overrides)
        self.client = rclpy.create_node("param_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.bridge)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def call(self, service: str, request: Any) -> Any:
        """Call one of the bridge's parameter services and return the response."""
        from rcl_interfaces.srv import GetParameters, SetParameters

        kind = {"set_parameters": SetParameters, "get_parameters": GetParameters}[service]
        client = self.client.create_client(kind, f"/{NAMESPACE}/vehicle_bridge/{service}")
        assert client.wait_for_service(timeout_sec=30), f"{service} service never appeared"
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(30), f"{service} did not answer"
        self.client.destroy_client(client)
        return future.result()

    def set(self, **values: Any) -> list[Any]:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        return list(self.call("set_parameters", request).results)

    def get(self, *names: str) -> list[Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        response = self.call("get_parameters", GetParameters.Request(names=list(names)))
        return [parameter_value_to_python(v) for v in response.values]

    def close(self) -> None:
        self.executor.shutdown()
        self.bridge.close()
        self.bridge.destroy_node()
        self.client.destroy_node()
        self.context.try_shutdown()
        self.thread.join(10)


@pytest.fixture
def live(ros_env) -> Iterator[LiveBridge]:
    bridge = LiveBridge()
    try:
        yield bridge
    finally:
        bridge.close()


def test_runtime_parameters_are_applied_to_the_running_node(live):
    results = live.set(publish_period_s=0.25, battery_stale_s=7, statuses=["idle", "parked"])
    assert [(r.successful, r.reason) for r in results] == [(True, "")] * 3
    assert live.get("publish_period_s", "battery_stale_s", "statuses") == [0.25, 7, ["idle", "parked"]]
    node = live.bridge
    assert node.params.publish_period_s == 0.25
    assert node._timer.timer_period_ns == 250_000_000  # the push timer itself was replaced
    assert node.builder.settings.battery_stale_s == 7.0
    assert node.builder.settings.statuses == ("idle", "parked")
    # What the builder does with it: a status outside the new set is now reported unknown.
    assert node.builder.on_status("on_mission", 0.0) is True


def test_restart_only_parameters_are_refused_with_a_reason(live):
    (vehicle,) = live.set(vehicle_id="V9")
    assert (
        not vehicle.successful and vehicle.reason == "vehicle_id: restart-only; set it in the params file and restart"
    )
    (topic,) = live.set(battery_topic="other_battery")
    assert not topic.successful and "battery_topic: restart-only" in topic.reason
    assert live.get("vehicle_id", "battery_topic") == ["V7", "battery_state"]
    assert live.bridge.params.builder.vehicle_id == "V7"


def test_rclpys_own_parameters_are_left_to_rclpy(live):
    (sim_time,) = live.set(use_sim_time=True)
    assert sim_time.successful, sim_time.reason
    assert live.get("use_sim_time") == [True]


def test_invalid_runtime_values_are_refused_and_change_nothing(live):
    (period,) = live.set(publish_period_s=-1.0)
    assert not period.successful and period.reason.startswith("publish_period_s: must be a number in [0.05, 3600]")
    (statuses,) = live.set(statuses=["no spaces allowed"])
    assert not statuses.successful and statuses.reason.startswith("statuses:")
    assert live.get("publish_period_s", "statuses")[0] == 1.0
    assert live.bridge.params.publish_period_s == 1.0
    assert live.bridge._timer.timer_period_ns == 1_000_000_000


def test_a_parameter_error_names_the_node_with_its_namespace(ros_env, tmp_path):
    params = write_bridge_params(tmp_path / "p.yaml", vehicle_id="")
    bridge = BridgeProcess(ros_env, params, f"__ns:=/{NAMESPACE}").start()
    try:
        assert bridge.wait(60) == 2, bridge.output
    finally:
        bridge.__exit__()
    assert f"/{NAMESPACE}/vehicle_bridge: invalid vehicle_bridge parameters" in bridge.output, bridge.output
    assert "vehicle_id: required" in bridge.output
