"""The test suites' ROS isolation is real: a private domain hears itself and nobody else."""

from __future__ import annotations

import time

import pytest
from support import ros_domain


@pytest.mark.ros
def test_private_domains_do_not_hear_each_other(ros_env: dict[str, str]) -> None:
    import rclpy  # the ros_env fixture has made sure it imports
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    own = int(ros_env["ROS_DOMAIN_ID"])
    with ros_domain() as other_env:
        other = int(other_env["ROS_DOMAIN_ID"])
        assert other != own
        contexts = {name: rclpy.Context() for name in ("pub", "same", "other")}
        rclpy.init(context=contexts["pub"], domain_id=own)
        rclpy.init(context=contexts["same"], domain_id=own)
        rclpy.init(context=contexts["other"], domain_id=other)
        executors: dict[str, SingleThreadedExecutor] = {}
        try:
            nodes = {name: rclpy.create_node(f"isolation_{name}", context=ctx) for name, ctx in contexts.items()}
            heard: dict[str, list[str]] = {"same": [], "other": []}
            for name in heard:
                nodes[name].create_subscription(String, "chatter", lambda m, n=name: heard[n].append(m.data), 10)
            publisher = nodes["pub"].create_publisher(String, "chatter", 10)
            for name, node in nodes.items():
                executors[name] = SingleThreadedExecutor(context=contexts[name])
                executors[name].add_node(node)
            deadline = time.monotonic() + 20
            while not heard["same"] and time.monotonic() < deadline:
                publisher.publish(String(data="hello"))
                for executor in executors.values():
                    executor.spin_once(timeout_sec=0.05)
            # keep listening a little longer on the other domain
            for _ in range(20):
                publisher.publish(String(data="hello"))
                for executor in executors.values():
                    executor.spin_once(timeout_sec=0.02)
            assert heard["same"], "a subscriber on the same domain never heard the publisher"
            assert heard["other"] == [], "a subscriber on another domain heard the publisher"
        finally:
            for executor in executors.values():
                executor.shutdown()
            for ctx in contexts.values():
                rclpy.shutdown(context=ctx)
