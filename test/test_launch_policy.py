"""The launch files' exit policy for the bridge: a crash is respawned after a delay, invalid parameters stop the
launch with a non-zero exit and a clear message (tvm_observability/bridge/launch_policy.py).

The policy itself is a pure function, tested here everywhere. The tests that run `ros2 launch` need launch,
launch_ros and ros2launch, which no package registry ships (a ROS installation or a colcon workspace has them),
and this package installed in an ament prefix (`colcon build`): elsewhere, as in `make test`, they skip saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from bridge_support import free_port, write_bridge_params
from support import wait_for

from tvm_observability.bridge.launch_policy import RESPAWN_DELAY_S, BridgeConfigurationError, check_bridge_exit
from tvm_observability.bridge.params import EXIT_BAD_PARAMETERS


def test_invalid_parameters_stop_the_launch_with_the_reason():
    with pytest.raises(BridgeConfigurationError) as info:
        check_bridge_exit(EXIT_BAD_PARAMETERS, "vehicle_bridge-2")
    message = str(info.value)
    assert message.startswith("vehicle_bridge-2 exited with code 2: its parameters are invalid")
    assert "not respawning" in message


@pytest.mark.parametrize("returncode", [0, 1, -signal.SIGSEGV, -signal.SIGKILL, -signal.SIGABRT])
def test_other_exits_are_left_to_respawn(returncode):
    assert check_bridge_exit(returncode, "vehicle_bridge-1") is None


def ros2_launch_command() -> list[str]:
    """`ros2 launch`, or a skip saying what is missing."""
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no registry ships it; ROS 2 does)")
    ros2 = shutil.which("ros2", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if ros2 is None:
        pytest.skip("the ros2 command is not installed (ros2cli, ros2launch)")
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix("tvm_observability")
    except PackageNotFoundError:
        pytest.skip("tvm_observability is not installed in an ament prefix (colcon build; source install/setup.bash)")
    return [ros2, "launch", "tvm_observability"]


class Launch:
    """A real `ros2 launch` process; its output collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def bridge_pids(self) -> list[int]:
        return [
            int(p)
            for p in re.findall(r"\[INFO\] \[vehicle_bridge-\d+\]: process started with pid \[(\d+)\]", self.output)
        ]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.mark.ros
@pytest.mark.parametrize("launch_file", ["vehicle_bridge.launch.py", "sim_vehicle.launch.py"])
def test_a_bad_parameter_ends_the_launch_non_zero(ros_env, launch_file):
    command = ros2_launch_command()
    launch = Launch([*command, launch_file, "vehicle_id:=V1", "aggregator_url:=ftp://nowhere"], ros_env)
    try:
        returncode = launch.proc.wait(120)
    finally:
        launch.close()
    assert returncode != 0, launch.output
    assert "aggregator_url: must be an http:// or https:// URL" in launch.output
    assert "its parameters are invalid" in launch.output and "not respawning" in launch.output
    assert len(launch.bridge_pids()) == 1, launch.output  # never respawned
    if launch_file == "sim_vehicle.launch.py":  # the simulator was stopped with it
        assert re.search(r"\[vehicle_simulator-\d+\]: process (has finished cleanly|has died)", launch.output)


@pytest.mark.ros
def test_a_crashed_bridge_is_respawned_after_the_delay(ros_env, tmp_path):
    command = ros2_launch_command()
    params = write_bridge_params(tmp_path / "p.yaml")
    args = [
        *command,
        *("vehicle_bridge.launch.py", "vehicle_id:=V1", f"params_file:={params}"),
        f"aggregator_url:=http://127.0.0.1:{free_port()}",  # nobody listens: the bridge retries, runs on
    ]
    launch = Launch(args, ros_env)
    try:
        (first,) = wait_for(launch.bridge_pids, 60, what="the bridge to start")
        wait_for(lambda: "pushing to" in launch.output, 60, what="the bridge to run")
        os.kill(first, signal.SIGKILL)
        pids = wait_for(lambda: launch.bridge_pids()[1:], 60 + RESPAWN_DELAY_S, what="the bridge respawned")
        assert pids[0] != first and launch.proc.poll() is None
        launch.proc.send_signal(signal.SIGINT)
        assert launch.proc.wait(60) == 0, launch.output
    finally:
        launch.close()
    assert "process has died" in launch.output and "parameters are invalid" not in launch.output
