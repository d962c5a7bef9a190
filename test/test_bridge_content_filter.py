"""bridge/content_filter.py against the real rcl and Fast DDS of this ROS install (Kilted, and Jazzy in
`make test-jazzy`, whose rclpy has no content-filter API): a filter set through rcl on an existing subscription
keeps only the entries at the level. (A filter rmw_fastrtps refuses leaves the subscription broken, so the bridge
only ever sets its one fixed expression, and only on an rmw known to take it: node.CONTENT_FILTER_RMWS.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tvm_observability.bridge.content_filter import set_filter

pytestmark = pytest.mark.ros

ERROR, INFO = 40, 20


def _level(value: bytes | int) -> int:
    """Log.level is a `byte`: one-byte bytes in rclpy."""
    return value[0] if isinstance(value, bytes) else int(value)


def _exchange(ros_env: dict[str, str], expression: str, parameters: list[str]) -> tuple[str | None, list[int]]:
    """A reliable Log subscription filtered by `expression`, then 20 INFO and 5 ERROR entries published to it:
    the filter's outcome and the levels the subscription received."""
    import rclpy
    from rcl_interfaces.msg import Log
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        reader = rclpy.create_node("filtered_reader", context=context, enable_rosout=False)
        writer = rclpy.create_node("log_writer", context=context, enable_rosout=False)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        subscription = reader.create_subscription(Log, "filter_test", lambda _msg: None, qos)
        handle: Any = subscription.handle
        with handle:
            problem = set_filter(handle.pointer, expression, parameters)
        publisher = writer.create_publisher(Log, "filter_test", qos)
        deadline = time.monotonic() + 20
        while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(25):
            publisher.publish(Log(level=ERROR if i % 5 == 4 else INFO, name="v1.planner", msg=f"line {i}"))

        def take() -> int | None:
            with handle:
                taken = handle.take_message(Log, False)
            return None if taken is None else _level(taken[0].level)

        received: list[int] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < 5:
            level = take()
            if level is None:
                time.sleep(0.02)
            else:
                received.append(level)
        time.sleep(0.3)  # anything the filter let through by mistake arrives meanwhile
        while (level := take()) is not None:
            received.append(level)
        reader.destroy_node()
        writer.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return problem, received


def test_a_filter_set_through_rcl_keeps_only_the_entries_at_the_level(ros_env: dict[str, str]) -> None:
    problem, received = _exchange(ros_env, "level >= %0", [str(ERROR)])
    assert problem is None
    assert received == [ERROR] * 5
