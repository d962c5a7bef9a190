"""Helpers for the vehicle_bridge tests: a real bridge process and an in-process publisher node."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tvm_observability.demo.processes import ChildProcess

SENSORS = {
    "lidar": {"topic": "scan", "type": "sensor_msgs/msg/LaserScan", "min_rate_hz": 2.0, "diagnostic_prefix": "lidar"},
    "camera": {
        "topic": "camera/image_raw",
        "type": "sensor_msgs/msg/Image",
        "min_rate_hz": 2.0,
        "diagnostic_prefix": "camera",
    },
}


def write_token(path: Path, token: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return path


def write_bridge_params(path: Path, **overrides: Any) -> Path:
    """A params file for a fast test bridge (0.5 s period, short timeouts and backoff)."""
    params: dict[str, Any] = {
        "publish_period_s": 0.5,
        "request_timeout_s": 1.0,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 1.0,
        "link_error_after_s": 3.0,
        "sensors": list(SENSORS),
        "sensor": SENSORS,
    }
    params.update(overrides)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}), encoding="utf-8")
    return path


def free_port() -> int:
    """A loopback port that was free a moment ago (for a server started later on a known port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BridgeProcess(ChildProcess):
    """A real `vehicle_bridge` process; its output (its ROS log) collected. `ros_args` are `name:=value`
    parameters and remappings (`__ns:=/v1`)."""

    def __init__(self, env: Mapping[str, str], params_file: Path | None = None, *ros_args: str) -> None:
        # TVM_BRIDGE_PYTHON runs the bridge under another interpreter, e.g. a venv with Humble's aiohttp 3.8.
        python = os.environ.get("TVM_BRIDGE_PYTHON") or sys.executable
        args = [python, "-m", "tvm_observability.bridge.node", "--ros-args"]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        for arg in ros_args:
            args += ["-p", arg] if ":=" in arg and not arg.startswith("__") else ["-r", arg]
        super().__init__(args, env=env)

    def start(self) -> BridgeProcess:
        self.launch()
        return self

    def boot_id(self) -> str | None:
        match = re.search(r"boot ([0-9a-f]{32})", self.output)
        return match.group(1) if match else None

    def rss_kib(self) -> int:
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


class HangingServer:
    """Accepts TCP connections on loopback and never answers (a wedged aggregator)."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                self.accepted.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


class FakeVehicle:
    """An in-process rclpy node publishing a vehicle's topics like real drivers would.

    It publishes the current values at 10 Hz from its own executor thread; tests change
    `battery`, `fix`, `status` and `diagnostics` (name -> (level, error_code)) between polls.
    """

    def __init__(self, namespace: str = "") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.battery = 0.765
        self.fix: tuple[float, float] | None = (52.5200, 13.4050)
        """(latitude, longitude) of the published fix; None publishes STATUS_NO_FIX."""
        self.status = "on_mission"
        self.diagnostics: dict[str, tuple[int, str | None]] = {}
        self.publish_camera = False
        self.bridges = 1
        """How many bridges must have subscribed to /diagnostics before a diagnostic change is sent."""
        self.bridge_health: list[tuple[float, dict[str, str], int]] = []
        self.published = 0
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node("fake_vehicle", namespace=namespace, context=self._context)
        self._make_publishers()
        self.executor = SingleThreadedExecutor(context=self._context)
        self.executor.add_node(self.node)
        self.node.create_timer(0.1, self._publish)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _make_publishers(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import BatteryState, Image, LaserScan, NavSatFix
        from std_msgs.msg import String

        n = self.node
        self.pubs = {
            "battery": n.create_publisher(BatteryState, "battery_state", 10),
            "fix": n.create_publisher(NavSatFix, "fix", 10),
            "odom": n.create_publisher(Odometry, "odom", 10),
            "status": n.create_publisher(String, "vehicle_status", 10),
            "diagnostics": n.create_publisher(DiagnosticArray, "/diagnostics", 50),
            "scan": n.create_publisher(LaserScan, "scan", qos_profile_sensor_data),
            "camera": n.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data),
        }
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _spin(self) -> None:
        with contextlib.suppress(Exception):
            self.executor.spin()

    def _publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import BatteryState, Image, LaserScan, NavSatFix
        from std_msgs.msg import String

        battery = BatteryState(percentage=self.battery, voltage=25.2)
        battery.power_supply_status = BatteryState.POWER_SUPPLY_STATUS_DISCHARGING
        self.pubs["battery"].publish(battery)
        latitude, longitude = self.fix if self.fix is not None else (math.nan, math.nan)
        fix = NavSatFix(latitude=latitude, longitude=longitude, altitude=34.0)
        fix.status.status = 0 if self.fix is not None else -1  # STATUS_NO_FIX
        self.pubs["fix"].publish(fix)
        odom = Odometry()
        odom.header.frame_id = "odom"
        odom.pose.pose.position.x = 12.5
        odom.pose.pose.orientation.w = 1.0
        odom.twist.twist.linear.x = 0.8
        self.pubs["odom"].publish(odom)
        self.pubs["status"].publish(String(data=self.status))
        self.pubs["scan"].publish(LaserScan(ranges=[1.0] * 10))
        if self.publish_camera:
            self.pubs["camera"].publish(Image(height=2, width=2, encoding="mono8", step=2, data=bytes(4)))
        array = DiagnosticArray()
        for name, (level, code) in list(self.diagnostics.items()):
            values = [KeyValue(key="error_code", value=code)] if code else []
            array.status.append(DiagnosticStatus(name=name, level=bytes([level]), message="test", values=values))
        if array.status:
            self.pubs["diagnostics"].publish(array)
        self.published += 1

    def set_diagnostic(self, name: str, level: int, code: str | None = None) -> None:
        """Change a diagnostic status and return once it has gone out a few times (reliable, in order).

        First waits until every bridge (`self.bridges`) subscribes to /diagnostics (our own subscription
        is one more): messages published before discovery completes would reach nobody.
        """
        deadline = time.monotonic() + 30
        wanted = self.bridges + 1
        while self.pubs["diagnostics"].get_subscription_count() < wanted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.pubs["diagnostics"].get_subscription_count() >= wanted, "a bridge never subscribed to /diagnostics"
        self.diagnostics[name] = (level, code)
        target = self.published + 3
        while self.published < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.published >= target, "fake vehicle stopped publishing"

    def error_event(self, name: str, code: str | None = None) -> None:
        """One ERROR rising edge: OK, then ERROR, each published in order."""
        self.set_diagnostic(name, 0)
        self.set_diagnostic(name, 2, code)
        self.set_diagnostic(name, 0)

    def latest_health(self) -> dict[str, str]:
        return self.bridge_health[-1][1] if self.bridge_health else {}

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.endswith(": aggregator link"):
                level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
                values = {kv.key: kv.value for kv in status.values}
                self.bridge_health.append((time.monotonic(), values, level))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self._context.try_shutdown()
        self._thread.join(5)
