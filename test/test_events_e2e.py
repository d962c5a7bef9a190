"""Vehicle error events end to end with real processes: rclpy nodes log ERROR/FATAL and publish a diagnostic in
ERROR -> vehicle_bridge process (namespace /v1, with a journal) -> aggregator process -> one JSON line each in the
events file, exactly once across a bridge restart that receives /rosout's transient-local history again; a node
of another vehicle on the same ROS domain is not captured; a flood stays within the caps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bridge_support import BridgeProcess, FakeVehicle, write_bridge_params, write_token
from support import AggregatorProcess, sample, scrape, wait_for

from tvm_observability.demo.link_proxy import LinkProxy

pytestmark = pytest.mark.ros

HOSTILE = 'planner failed\n{"level":"INFO","context":{"vehicle_id":"V2"}}\x1b[31m red \x1b[0m'


def journal(tmp_path: Path) -> dict[str, Any]:
    """A journal that flushes often and drains fast: what survives a restart or a cut link, delivered soon."""
    return {
        "journal_dir": str(tmp_path / "journal"),
        "journal_flush_interval_s": 0.2,
        "backlog_max_snapshots_per_s": 50.0,
    }


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_logged_errors_and_diagnostics_reach_the_events_file_once(ros_env, tmp_path, fleet_tokens, write_config):
    import rclpy

    events_file = tmp_path / "logs" / "vehicle-events.jsonl"
    config = write_config(fleet_tokens, events={"file": str(events_file), "max_per_vehicle_per_minute": 1000})
    token_file = write_token(tmp_path / "v1.token", fleet_tokens["V1"])
    vehicle = FakeVehicle(namespace="/v1")
    planner = rclpy.create_node("planner", namespace="/v1", context=vehicle._context)
    intruder = rclpy.create_node("planner", namespace="/v2", context=vehicle._context)
    try:
        with AggregatorProcess(config) as agg:

            def bridge_params(name: str, **more: Any) -> Path:
                return write_bridge_params(
                    tmp_path / name,
                    vehicle_id="V1",
                    aggregator_url=agg.url,
                    token_file=str(token_file),
                    events_max_per_minute=30,
                    **journal(tmp_path),
                    **more,
                )

            params = bridge_params("bridge.yaml")

            def written() -> list[dict[str, Any]]:
                return [r for r in lines(events_file) if r["context"]["vehicle_id"] == "V1"]

            def wait_lines(count: int, what: str) -> list[dict[str, Any]]:
                return wait_for(lambda: len(written()) >= count and written(), 30, what=what)  # type: ignore[no-any-return]

            first = BridgeProcess(ros_env, params, "__ns:=/v1").start()
            try:
                wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V1") == 1.0, 30, what="V1 up")
                wait_for(lambda: "events_captured" in vehicle.latest_health(), 30, what="bridge health")
                # The shipped default: Fast DDS drops the entries below ERROR (asked by rclpy on Kilted, through
                # rcl on Jazzy, bridge/content_filter.py).
                assert vehicle.latest_health()["rosout_filter"] == "middleware"
                planner.get_logger().error(HOSTILE)
                planner.get_logger().fatal("motor controller lost")
                planner.get_logger().info("all fine")  # below the level: never an event
                intruder.get_logger().error("another vehicle's error")
                vehicle.error_event("lidar: driver", "VEH-LID-001")
                records = wait_lines(3, "three events written")
            finally:
                assert first.stop() == 0
            by_message = {r["message"]: r for r in records}
            hostile = next(r for r in records if r["message"].startswith("planner failed"))
            assert hostile["level"] == "ERROR" and hostile["component"] == "v1.planner"
            assert "\\u000a" in hostile["message"] and "\x1b" not in hostile["message"]
            assert hostile["context"]["vehicle_id"] == "V1" and hostile["event"]["source"] == "rosout"
            assert by_message["motor controller lost"]["level"] == "FATAL"
            diagnostic = by_message["test"]
            assert diagnostic["error"]["code"] == "VEH-LID-001" and diagnostic["component"] == "lidar: driver"
            assert diagnostic["event"]["source"] == "diagnostic"
            assert all(r["service"] == "vehicle" for r in records)
            assert len({r["event"]["id"] for r in records}) == len(records) == 3, records
            first_boot = records[0]["context"]["boot_id"]

            # The restarted bridge drops what is below ERROR itself (an rmw without content filters): /rosout's
            # history then brings it the first run's INFO line as well.
            unfiltered = bridge_params("bridge-unfiltered.yaml", events_rosout_filter=False)
            with BridgeProcess(ros_env, unfiltered, "__ns:=/v1") as second:
                # Logged before the new bridge can have subscribed (its process is only starting): it reaches the
                # bridge through /rosout's history, which lasts about 10 s, with the first run's entries.
                planner.get_logger().error("logged while the bridge was down")
                wait_lines(4, "the error logged while the bridge was down")

                # /rosout's history (the first run's entries) has been offered to the new subscription by now;
                # let a few more snapshots go out before counting.
                def accepted() -> int:
                    health = vehicle.latest_health()
                    return int(health["pushes_accepted"]) if health.get("boot_id") == second.boot_id() else 0

                pushed = accepted()
                wait_for(lambda: accepted() >= pushed + 4, 30, what="more snapshots from the second bridge")
                assert vehicle.latest_health()["rosout_filter"] == "bridge (events_rosout_filter is false)"
                after_restart = written()
                assert [r["message"] for r in after_restart[3:]] == ["logged while the bridge was down"], after_restart
                assert after_restart[3]["context"]["boot_id"] != first_boot

                for i in range(100):  # a flood: the bridge keeps 30 a minute, drops and counts the rest
                    planner.get_logger().error(f"flood {i}")
                wait_for(
                    lambda: int(vehicle.latest_health().get("events_dropped_rate", "0")) > 0,
                    30,
                    what="flood drops counted by the bridge",
                )
                wait_for(
                    lambda: int(vehicle.latest_health().get("events_pending", "1")) == 0, 30, what="flood delivered"
                )
                wait_for(
                    lambda: len([r for r in written() if r["message"].startswith("flood")]) >= 29, 30, what="29 floods"
                )
                assert second.stop() == 0
            flood = [r for r in written() if r["message"].startswith("flood")]
            assert [r["message"] for r in flood] == [f"flood {i}" for i in range(29)], vehicle.latest_health()
            assert len({r["event"]["id"] for r in written()}) == len(written()) == 4 + 29
            assert not any("another vehicle" in r["message"] for r in lines(events_file))
            samples = scrape(agg.url)
            assert sample(samples, "vehicle_log_events_total", vehicle_id="V1", level="ERROR") == 4 + 29 - 1
            assert sample(samples, "vehicle_log_events_total", vehicle_id="V1", level="FATAL") == 1
    finally:
        planner.destroy_node()
        intruder.destroy_node()
        vehicle.close()


def test_a_retried_push_and_a_cut_link_write_each_event_once(ros_env, tmp_path, fleet_tokens, write_config):
    """A slow link makes the bridge time out and send again what the aggregator already wrote; a cut link leaves
    the events in the journal, delivered as backlog once it is back: one line each."""
    import rclpy

    events_file = tmp_path / "vehicle-events.jsonl"
    config = write_config(fleet_tokens, events={"file": str(events_file)})
    vehicle = FakeVehicle(namespace="/v1")
    planner = rclpy.create_node("planner", namespace="/v1", context=vehicle._context)
    try:
        with AggregatorProcess(config) as agg:
            link = LinkProxy(("127.0.0.1", int(agg.url.rsplit(":", 1)[1])))
            params = write_bridge_params(
                tmp_path / "bridge.yaml",
                vehicle_id="V1",
                aggregator_url=link.url,
                token_file=str(write_token(tmp_path / "v1.token", fleet_tokens["V1"])),
                **journal(tmp_path),
            )

            def messages() -> list[str]:
                return [r["message"] for r in lines(events_file)]

            def failures() -> int:
                return int(vehicle.latest_health().get("pushes_failed", "0"))

            with BridgeProcess(ros_env, params, "__ns:=/v1") as bridge:
                wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V1") == 1.0, 30, what="V1 up")
                wait_for(lambda: "events_captured" in vehicle.latest_health(), 30, what="bridge health")

                link.slow(1.5)  # the aggregator answers after the bridge's 1 s timeout: every push is retried
                failed = failures()
                planner.get_logger().error("while the link is slow")
                wait_for(lambda: "while the link is slow" in messages(), 30, what="written on a timed-out push")
                wait_for(lambda: failures() >= failed + 2, 30, what="pushes retried after their timeout")

                link.cut()
                failed = failures()
                planner.get_logger().error("while the link is cut")
                vehicle.error_event("lidar: driver", "VEH-LID-001")
                wait_for(lambda: vehicle.latest_health().get("events_pending") == "0", 30, what="events journalled")
                wait_for(lambda: failures() >= failed + 2, 30, what="pushes failing in the cut")
                assert "while the link is cut" not in messages()
                link.restore()
                wait_for(lambda: "while the link is cut" in messages() and "test" in messages(), 60, what="backlog")
                wait_for(
                    lambda: int(vehicle.latest_health().get("journal_entries") or 99) <= 1, 60, what="journal drained"
                )
                assert bridge.stop() == 0
            link.close()
            assert sorted(messages()) == sorted(["while the link is slow", "while the link is cut", "test"])
            records = lines(events_file)
            assert len({r["event"]["id"] for r in records}) == 3
            assert next(r for r in records if r["message"] == "test")["error"]["code"] == "VEH-LID-001"
    finally:
        planner.destroy_node()
        vehicle.close()
