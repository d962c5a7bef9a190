"""ROS 2 processes of the bridge benchmark (run as `python -m bench.ros_nodes publisher|floor|chatter`).

publisher: the standard robot topic load: odometry 50 Hz, NavSatFix 10 Hz, LaserScan (720 ranges) 10 Hz,
  640x480 rgb8 Image 30 Hz, diagnostics 1 Hz, battery ~1 Hz (every 1.1 s).
  Each battery message carries a new percentage; its value and publish time go to stdout as a JSON line
  (for the freshness benchmark).
floor: a bare rclpy node with the same subscriptions, raw (messages never deserialised), doing nothing:
  the least any node listening to this load costs.
chatter: a chatty robot's /rosout: CHATTY_NODES nodes in one process, each logging INFO_PER_S INFO lines per second
  and ERROR_PER_S ERROR lines per second through its real rclpy logger (so every line goes through /rosout).
rosout: a bare rclpy node subscribed to /rosout with the bridge's QoS, each message deserialised, ERRORs kept:
  the least a Python subscriber to this load costs. rosout-filtered: the same with a DDS content filter
  (`level >= 40`), so the middleware drops the INFO lines before Python sees them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Log
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import BatteryState, Image, LaserScan, NavSatFix

from tvm_observability.bridge.content_filter import set_filter
from tvm_observability.bridge.node import LEVEL_FILTER

TOPICS = (
    ("odom", Odometry, 50.0),
    ("fix", NavSatFix, 10.0),
    ("scan", LaserScan, 10.0),
    ("camera/image_raw", Image, 30.0),
    ("/diagnostics", DiagnosticArray, 1.0),
    ("battery_state", BatteryState, 1 / 1.1),
)
"""(topic, type, rate Hz). Battery every 1.1 s rather than 1.0 s: its publish times then sweep across the
bridge's 1 s push phase, so the freshness samples cover every phase instead of one."""
CHATTY_NODES = 3
INFO_PER_S = 100.0
ERROR_PER_S = 1.0
ROSOUT_LOAD = (
    f"/rosout load: {CHATTY_NODES} nodes in one process, each logging {INFO_PER_S:g} INFO and {ERROR_PER_S:g} ERROR "
    f"lines per second through rclpy loggers ({CHATTY_NODES * INFO_PER_S:g} INFO/s and {CHATTY_NODES * ERROR_PER_S:g} "
    "ERROR/s in all), beside the topic load."
)
LOAD = (
    "Topic load: odometry 50 Hz, NavSatFix 10 Hz, LaserScan (720 ranges) 10 Hz, 640×480 rgb8 Image 30 Hz "
    "(27.6 MB/s), diagnostics 1 Hz, battery every 1.1 s (sweeps the push phase), from one publisher process."
)


def _messages() -> dict[str, object]:
    odom = Odometry()
    odom.header.frame_id = "odom"
    odom.pose.pose.orientation.w = 1.0
    odom.twist.twist.linear.x = 0.8
    fix = NavSatFix()
    fix.status.status = 0
    fix.latitude, fix.longitude, fix.altitude = 52.52, 13.405, 34.0
    scan = LaserScan()
    scan.angle_min, scan.angle_max, scan.angle_increment = -3.14, 3.14, 6.28 / 720
    scan.range_max = 30.0
    scan.ranges = [5.0] * 720
    image = Image()
    image.height, image.width, image.encoding, image.step = 480, 640, "rgb8", 640 * 3
    image.data = bytes(640 * 480 * 3)
    diagnostics = DiagnosticArray()
    diagnostics.status = [
        DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{name}: driver", message="ok")
        for name in ("lidar", "camera", "imu", "gps")
    ]
    battery = BatteryState()
    battery.voltage = 25.2
    battery.power_supply_status = BatteryState.POWER_SUPPLY_STATUS_DISCHARGING
    return {
        "odom": odom,
        "fix": fix,
        "scan": scan,
        "camera/image_raw": image,
        "/diagnostics": diagnostics,
        "battery_state": battery,
    }


def publisher() -> None:
    node = Node("bench_publisher")
    messages = _messages()
    clock = node.get_clock()
    step = [0]

    def publish(topic: str, pub: object) -> None:
        msg = messages[topic]
        stamp = clock.now().to_msg()
        if hasattr(msg, "header"):
            msg.header.stamp = stamp  # type: ignore[attr-defined]
        if topic == "odom":
            msg.pose.pose.position.x += 0.016  # type: ignore[attr-defined]
        if topic == "battery_state":
            step[0] += 1
            percent = 10 + step[0] % 80  # a new whole percentage each second
            msg.percentage = percent / 100.0  # type: ignore[attr-defined]
            pub.publish(msg)  # type: ignore[attr-defined]
            print(json.dumps({"percent": percent, "t": time.time()}), flush=True)
            return
        pub.publish(msg)  # type: ignore[attr-defined]

    for topic, kind, rate in TOPICS:
        pub = node.create_publisher(kind, topic, qos_profile_sensor_data if topic != "/diagnostics" else 50)
        node.create_timer(1.0 / rate, lambda topic=topic, pub=pub: publish(topic, pub))
    rclpy.spin(node)


def floor() -> None:
    node = Node("bench_floor")
    for topic, kind, _ in TOPICS:
        node.create_subscription(
            kind, topic, lambda _raw: None, qos_profile_sensor_data if topic != "/diagnostics" else 50, raw=True
        )
    rclpy.spin(node)


def _chatty(node: Node) -> None:
    """Timers that log through the node's own rclpy logger: each line goes to /rosout like any node's."""
    logger = node.get_logger()
    cycle = [0]

    def info() -> None:
        cycle[0] += 1
        logger.info(f"planning cycle {cycle[0]}: 12 candidate paths, best cost 3.25")

    def error() -> None:
        logger.error(f"obstacle cost map stale after cycle {cycle[0]}")

    node.create_timer(1.0 / INFO_PER_S, info)
    node.create_timer(1.0 / ERROR_PER_S, error)


def chatter() -> None:
    executor = SingleThreadedExecutor()
    for n in range(CHATTY_NODES):
        node = Node(f"bench_chatter_{n}")
        _chatty(node)
        executor.add_node(node)
    executor.spin()


ERROR_LEVEL = 40
"""rcl_interfaces/msg/Log.ERROR."""


def _rosout_subscriber(filtered: bool) -> None:
    node = Node("bench_rosout")
    kept: list[Log] = []

    def keep(msg: Log) -> None:
        if msg.level >= ERROR_LEVEL:
            kept.append(msg)
            del kept[:-10]

    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    subscription = node.create_subscription(Log, "/rosout", keep, qos)
    if filtered:  # as the bridge sets it on Humble and Jazzy (rcl), here on every distribution
        handle = subscription.handle
        with handle:
            problem = set_filter(handle.pointer, LEVEL_FILTER, [str(ERROR_LEVEL)])
        if problem is not None:
            raise RuntimeError(f"no content filter: {problem}")
    rclpy.spin(node)


def main() -> int:
    rclpy.init()
    try:
        modes: dict[str, Callable[[], None]] = {
            "publisher": publisher,
            "floor": floor,
            "chatter": chatter,
            "rosout": lambda: _rosout_subscriber(False),
            "rosout-filtered": lambda: _rosout_subscriber(True),
        }
        modes[sys.argv[1]]()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
