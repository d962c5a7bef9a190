"""A simulated vehicle: vehicle_simulator and vehicle_bridge in one namespace.

    ros2 launch tvm_observability sim_vehicle.launch.py vehicle_id:=V1 namespace:=v1 \
        aggregator_url:=http://127.0.0.1:9100 token_file:=/tmp/v1.token \
        fault_error_sensor:=camera fault_error_code:=CAM_USB

The bridge follows vehicle_bridge.launch.py's exit policy: respawned after a crash; invalid parameters stop the
whole launch (simulator included) with a non-zero exit.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

_FAULTS: dict[str, tuple[str, type]] = {
    "fault_after_s": ("0.0", float),
    "fault_stop_sensor": ("", str),
    "fault_error_sensor": ("", str),
    "fault_error_code": ("", str),
    "fault_error_period_s": ("0.0", float),
    "fault_low_battery": ("0.0", float),
}


def _bridge_launch() -> ModuleType:
    """The sibling vehicle_bridge.launch.py (its file name is not importable as a module name)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vehicle_bridge.launch.py")
    spec = importlib.util.spec_from_file_location("tvm_vehicle_bridge_launch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_launch_description() -> LaunchDescription:
    bridge = _bridge_launch()
    fault_args = [
        DeclareLaunchArgument(name, default_value=default, description=f"vehicle_simulator parameter {name}.")
        for name, (default, _) in _FAULTS.items()
    ]
    simulator = Node(
        package="tvm_observability",
        executable="vehicle_simulator",
        name="vehicle_simulator",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            {name: ParameterValue(LaunchConfiguration(name), value_type=kind) for name, (_, kind) in _FAULTS.items()}
        ],
    )
    return LaunchDescription([*bridge.bridge_arguments(), *fault_args, simulator, *bridge.bridge_actions()])
