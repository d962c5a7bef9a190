"""Launch the vehicle_bridge on a robot.

    ros2 launch tvm_observability vehicle_bridge.launch.py vehicle_id:=V5 namespace:=v5 \
        aggregator_url:=https://fleet.example:9100 token_file:=/etc/tvm_observability/v5.token

Every other parameter comes from params_file (default: the installed config/vehicle_bridge.yaml).

A crashed bridge is respawned after a delay; a bridge that exits on invalid parameters stops the launch, which
exits non-zero (tvm_observability/bridge/launch_policy.py).
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import Action, LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from tvm_observability.bridge.launch_policy import RESPAWN_DELAY_S, check_bridge_exit


def bridge_arguments() -> list[DeclareLaunchArgument]:
    """The launch arguments shared with sim_vehicle.launch.py."""
    default_params = os.path.join(get_package_share_directory("tvm_observability"), "config", "vehicle_bridge.yaml")
    return [
        DeclareLaunchArgument("vehicle_id", description="This vehicle's id (required), e.g. V5."),
        DeclareLaunchArgument("aggregator_url", default_value="http://127.0.0.1:9100", description="Aggregator URL."),
        DeclareLaunchArgument(
            "token_file", default_value="", description="File with this vehicle's bearer token (mode 0600)."
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the vehicle's topics."),
        DeclareLaunchArgument("params_file", default_value=default_params, description="Bridge parameters file."),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn or error."),
    ]


def bridge_node() -> Node:
    return Node(
        package="tvm_observability",
        executable="vehicle_bridge",
        name="vehicle_bridge",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                # value_type=str: a vehicle id such as 5 must stay a string, not become an integer.
                "vehicle_id": ParameterValue(LaunchConfiguration("vehicle_id"), value_type=str),
                "aggregator_url": LaunchConfiguration("aggregator_url"),
                "token_file": ParameterValue(LaunchConfiguration("token_file"), value_type=str),
            },
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        respawn=True,
        respawn_delay=RESPAWN_DELAY_S,
    )


def _on_bridge_exit(event: ProcessExited, _context: LaunchContext) -> None:
    check_bridge_exit(event.returncode, event.process_name)  # raises on a configuration error: the launch fails


def bridge_actions() -> list[Action]:
    """The bridge node and the exit policy applied to it (shared with sim_vehicle.launch.py)."""
    node = bridge_node()
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_bridge_exit))]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*bridge_arguments(), *bridge_actions()])
