"""vehicle_bridge node: rclpy wiring only. Converters read messages, the builder keeps state,
the pusher talks HTTP; this module connects them to topics, a timer and /diagnostics."""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import replace
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Log, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rclpy.utilities import get_rmw_implementation_identifier
from sensor_msgs.msg import BatteryState, NavSatFix
from std_msgs.msg import String

from .. import codec
from . import converters
from .backlog import BacklogUploader
from .content_filter import set_filter
from .events import MARKS_FILE, ROSOUT_LEVELS, CaptureSettings, EventCapture, RosoutMarks
from .journal import Journal
from .params import (
    EXIT_BAD_PARAMETERS,
    PARAMETERS,
    SENSOR_FIELDS,
    ParamError,
    parse_params,
    read_token,
    sensor_param,
    update_params,
)
from .pusher import Pusher, link_level, links_level
from .snapshot import SnapshotBuilder

NODE_NAME = "vehicle_bridge"
_LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN, "ERROR": DiagnosticStatus.ERROR}
_LATENESS_WINDOW = 10
ROSOUT_DRAIN_PERIOD_S = 0.1
ROSOUT_DEPTH = 1000
"""Entries the /rosout reader keeps between two drains: 10,000 log lines a second before one is lost, or with the
middleware's content filter (drained once a tick) 1,000 entries at the level per publish period."""


class VehicleBridge(Node):
    """Subscribes to the vehicle's topics and pushes one snapshot per publish_period_s."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._rosout_reader: Node | None = None
        self._drain_rosout_in_tick = False
        self.rosout_filter = "off"
        """Who drops /rosout entries below events_min_level: "middleware" (a DDS content filter), else the bridge
        and why (shown in /diagnostics as `rosout_filter`)."""
        try:
            self._start()
        except ParamError as exc:
            # The full name (/v5/vehicle_bridge): on a robot with several namespaces it says which bridge it is.
            self.get_logger().error(f"{self.get_fully_qualified_name()}: {exc}")
            self.destroy_node()
            raise

    def _start(self) -> None:
        self._values = self._declare_parameters()
        self.params = parse_params(self._values)
        token = None
        if self.params.token_file:
            token, warning = read_token(self.params.token_file)
            if warning:
                self.get_logger().warning(warning)
        else:
            self.get_logger().warning("no token_file: pushing without credentials (only a dev aggregator accepts)")
        sensor_types = {s.name: _message_type(s.name, s.message_type) for s in self.params.builder.sensors if s.topic}
        self._started = time.monotonic()
        self.builder = SnapshotBuilder(self.params.builder, started=self._started)
        self.journal: Journal | None = None
        self.backlog: BacklogUploader | None = None
        if (journal := self.params.journal) is not None:
            self.journal = Journal(
                journal.directory,
                max_bytes=journal.max_bytes,
                max_age_s=journal.max_age_s,
                flush_interval_s=journal.flush_interval_s,
                downsample_after_s=journal.downsample_after_s,
                downsample_keep_every=journal.downsample_keep_every,
            )
            backlog_client = self.params.backlog_client(token)
            assert backlog_client is not None
            self.backlog = BacklogUploader(
                self.journal,
                backlog_client,
                max_snapshots_per_s=journal.max_snapshots_per_s,
                batch_size=journal.batch_size,
            )
        # One pusher per aggregator (two replicas of a shard, decision 0005): each keeps its own latest snapshot,
        # retries and thread, so a failing replica never delays the other.
        self.pushers = [
            Pusher(client, on_accepted=None if self.journal is None else self.journal.acknowledged)
            for client in self.params.live_clients(token)
        ]
        self.pusher = self.pushers[0]
        self.events = self._event_capture()
        self._health_name = f"{self.get_name()}: aggregator link"
        self._journal_problem = ""
        self._link_level = ""
        self._lateness: list[float] = []
        self._next_tick = self._started + self.params.publish_period_s
        self._subscribe(sensor_types)
        self._diag_pub = self.create_publisher(DiagnosticArray, self.params.topics.diagnostics, 10)
        for pusher in self.pushers:
            pusher.start()
        if self.backlog is not None:
            self.backlog.start()
        self._timer = self.create_timer(self.params.publish_period_s, self._tick)
        # After the declarations (declaring runs these callbacks too): `ros2 param set` is applied or refused.
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"vehicle {self.params.builder.vehicle_id} boot {self.builder.boot_id}: pushing to "
            f"{' and '.join(self.params.telemetry_urls)} every {self.params.publish_period_s:g} s, "
            f"watching {', '.join(s.name for s in self.params.builder.sensors) or 'no sensors'}"
        )

    def _event_capture(self) -> EventCapture:
        """Error events of the vehicle's own nodes; /rosout marks kept next to the journal (bridge/events.py)."""
        events = self.params.events
        assert events is not None
        marks = RosoutMarks(
            None if self.journal is None else str(self.journal.path.parent / MARKS_FILE), floor=time.time()
        )
        if marks.problem:
            self.get_logger().warning(f"rosout marks not read, /rosout history may be captured again: {marks.problem}")
        settings = CaptureSettings(
            events_min_level=events.min_level,
            events_namespace=events.namespace or self.get_namespace(),
            own_logger=self.get_logger().name,
            events_max_per_push=events.max_per_push,
            events_max_per_minute=events.max_per_minute,
            events_max_pending=events.max_pending,
        )
        return EventCapture(settings, marks)

    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter on the node; their values (not yet validated)."""
        values: dict[str, Any] = {}
        for spec in PARAMETERS:
            values[spec.name] = self._declare(spec.name, spec.default, spec.description)
        if isinstance(values["vehicle_id"], int):
            values["vehicle_id"] = str(values["vehicle_id"])  # -p vehicle_id:=5 arrives as an integer
        names = values["sensors"]
        for name in names if isinstance(names, list) else []:
            if isinstance(name, str):
                for spec in SENSOR_FIELDS:
                    key = sensor_param(name, spec.name)
                    values[key] = self._declare(key, spec.default, spec.description)
        return values

    def _declare(self, name: str, default: Any, description: str) -> Any:
        # dynamic_typing: `-p publish_period_s:=2` (an int) must reach validation, not crash declaration.
        descriptor = ParameterDescriptor(description=description, dynamic_typing=True)
        return _plain(self.declare_parameter(name, default, descriptor).value)

    def _on_set_parameters(self, changes: list[Parameter[Any]]) -> SetParametersResult:
        """A runtime parameter is validated with the others and applied at once; a restart-only one, or an
        invalid value, is refused with the reason (`ros2 param set` prints it) and changes nothing. Parameters the
        bridge does not declare (rclpy's own, such as use_sim_time) are left to rclpy."""
        requested = {p.name: _plain(p.value) for p in changes if p.name in self._values}
        if not requested:
            return SetParametersResult(successful=True)
        try:
            params = update_params(self._values, requested)
        except ParamError as exc:
            reason = "; ".join(exc.problems)
            self.get_logger().warning(f"parameter change refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        self._values.update(requested)
        if params.publish_period_s != self.params.publish_period_s:
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(params.publish_period_s, self._tick)
            self._next_tick = _now() + params.publish_period_s
        self.builder.settings = params.builder
        self.params = params
        self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in requested.items()))
        return SetParametersResult(successful=True)

    def _subscribe(self, sensor_types: dict[str, Any]) -> None:
        topics = self.params.topics
        b = self.builder
        sensor_qos = qos_profile_sensor_data  # best effort: matches reliable and best-effort publishers
        stamp = converters.stamp_of
        # Battery, GNSS and odometry arrive at up to 50 Hz but are pushed once per period: their
        # subscriptions are raw and keep only the newest message, deserialised once per tick (_drain_inputs).
        self._inputs: dict[str, tuple[Any, Any]] = {
            topics.battery: (BatteryState, lambda m, t: b.on_battery(converters.battery_from_msg(m), t, stamp(m))),
            topics.fix: (NavSatFix, lambda m, t: b.on_position(converters.position_from_msg(m), t, stamp(m))),
            topics.odom: (Odometry, lambda m, t: b.on_pose(converters.pose_from_msg(m), t, stamp(m))),
        }
        self._newest: dict[str, tuple[bytes, float]] = {}
        # A liveness sensor on an input topic (e.g. gps on `fix`) is counted by that input's subscription
        # instead of a second one: one subscription per topic, every message delivered once.
        shared: dict[str, list[str]] = {topic: [] for topic in self._inputs}
        for spec in self.params.builder.sensors:
            if not spec.topic:
                continue
            if spec.topic in self._inputs and sensor_types[spec.name] is self._inputs[spec.topic][0]:
                shared[spec.topic].append(spec.name)
                continue
            self.create_subscription(
                sensor_types[spec.name],
                spec.topic,
                lambda _raw, name=spec.name: b.on_sensor_message(name, _now()),
                sensor_qos,
                raw=True,  # count messages only: never deserialise a camera image
            )
        for topic, (msg_type, _) in self._inputs.items():
            self.create_subscription(msg_type, topic, self._keep_newest(topic, shared[topic]), sensor_qos, raw=True)
        self.create_subscription(String, topics.status, self._on_status, 10)
        self.create_subscription(DiagnosticArray, topics.diagnostics, self._on_diagnostics, 50)
        if self.params.events is not None and self.params.events.rosout:
            self._read_rosout(self.params.events.min_level, self.params.events.rosout_filter)

    def _read_rosout(self, min_level: str, content_filter: bool) -> None:
        """/rosout carries every log line of every node, hundreds a second on a chatty robot, and rclpy's executor
        costs more per message than all the rest of the bridge's work (docs/benchmarks.md, "/rosout cost"). So it
        is read by a subscription outside the executor (on a reader node that is never spun), drained in batches
        by a timer, serialized, and an entry below `min_level` is dropped by its level byte, never deserialized.
        Where the middleware has content filters, it drops those entries before they are received at all
        (`level >= min_level`): what the level byte leaves, the DDS receipt of each one, is gone. rclpy asks for
        the filter from Kilted on; on Humble and Jazzy the bridge sets it through rcl (bridge/content_filter.py).
        Its QoS is /rosout's own: reliable and transient local, so entries of the last seconds (its lifespan)
        arrive after a restart too; RosoutMarks keeps them from being captured twice."""
        reader = self._rosout_reader = rclpy.create_node(
            NODE_NAME + "_rosout_reader",
            namespace=self.get_namespace(),
            context=self.context,
            enable_rosout=False,
            start_parameter_services=False,
        )
        rosout_qos = QoSProfile(
            depth=ROSOUT_DEPTH, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self._rosout_min_level = ROSOUT_LEVELS[min_level]
        level = [str(self._rosout_min_level)]
        options = _rclpy_filter_options(level) if content_filter else None
        if options is not None:  # rclpy has content filters (Kilted on)
            self._rosout = reader.create_subscription(
                Log, "/rosout", _never_called, rosout_qos, content_filter_options=options
            )
            # rcl falls back to an unfiltered subscription where the middleware has no content filters.
            cft = self._rosout.is_cft_enabled
            self.rosout_filter = "middleware" if cft else "bridge (the middleware has no content filters)"
        else:
            self._rosout = reader.create_subscription(Log, "/rosout", _never_called, rosout_qos)
            if not content_filter:
                self.rosout_filter = "bridge (events_rosout_filter is false)"
            else:  # Humble, Jazzy: rcl has content filters, rclpy does not expose them
                self.rosout_filter = self._filter_through_rcl(level)
        self.get_logger().info(f"/rosout entries below {min_level} are dropped by: {self.rosout_filter}")
        if self.rosout_filter == "middleware":
            # Only entries at the level arrive: the tick takes them (ROSOUT_DEPTH a period), no timer of its own.
            self._drain_rosout_in_tick = True
        else:
            self.create_timer(ROSOUT_DRAIN_PERIOD_S, self._drain_rosout)

    def _filter_through_rcl(self, level: list[str]) -> str:
        """LEVEL_FILTER on the /rosout subscription through rcl, on an rmw known to take it (rmw_fastrtps
        leaves a subscription broken when it refuses a filter, so none is tried where it might be refused)."""
        rmw = get_rmw_implementation_identifier()
        if rmw not in CONTENT_FILTER_RMWS:
            return f"bridge ({rmw} is not known to filter content)"
        handle = self._rosout.handle
        with handle:  # held: not destroyed while rcl works on it
            problem = set_filter(handle.pointer, LEVEL_FILTER, level)
        return "middleware" if problem is None else f"bridge ({problem})"

    def _keep_newest(self, topic: str, sensors: list[str]) -> Any:
        """A raw callback that keeps the topic's newest message and counts the sensors sharing the topic."""
        newest = self._newest
        builder = self.builder

        def callback(raw: bytes) -> None:
            now = _now()
            newest[topic] = (raw, now)
            for name in sensors:
                builder.on_sensor_message(name, now)

        return callback

    def _drain_inputs(self) -> None:
        """Deserialise the newest message of each input received since the last tick, with its arrival time."""
        for topic, (raw, received) in self._newest.items():
            msg_type, apply = self._inputs[topic]
            apply(deserialize_message(raw, msg_type), received)
        self._newest.clear()

    def _on_status(self, msg: String) -> None:
        text = converters.status_from_msg(msg)
        if self.builder.on_status(text, _now()):
            self.get_logger().warning(
                f"status {text[:64]!r} is not in the configured statuses; reported as unknown (logged once)"
            )

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        entries = [e for e in converters.diagnostics_from_msg(msg) if e.name != self._health_name]
        now = _now()
        stamp = converters.stamp_of(msg) or time.time()
        for entry, code in self.builder.on_diagnostics(entries, now):
            self.events.on_diagnostic_error(entry, code, stamp, now)

    def _drain_rosout(self) -> None:
        """Take what /rosout delivered since the last drain (at most the reader's depth, which is what it keeps)."""
        now = _now()
        handle = self._rosout.handle
        with handle:
            for _ in range(ROSOUT_DEPTH):
                taken = handle.take_message(Log, True)  # serialized: most entries are dropped by their level byte
                if taken is None:
                    return
                level = converters.serialized_log_level(taken[0])
                if level is None or level >= self._rosout_min_level:
                    entry = converters.log_entry_from_msg(deserialize_message(taken[0], Log))
                    self.events.on_rosout(entry, now)

    def _tick(self) -> None:
        self._drain_inputs()
        if self._drain_rosout_in_tick:
            self._drain_rosout()
        now = _now()
        self._lateness = [*self._lateness[-(_LATENESS_WINDOW - 1) :], max(0.0, now - self._next_tick)]
        self._next_tick = max(self._next_tick + self.params.publish_period_s, now)
        if self.journal is not None and self.journal.flush_due():
            # Before this tick's snapshot: with the link up, the earlier ones are acknowledged and gone, so nothing
            # is written (flushing after the add wrote every in-flight snapshot, then deleted it on its
            # acknowledgement: ~15 MB/h of storage writes with the link up). This one waits for the next flush.
            self.journal.flush()
            self.events.marks.save()  # after the flush, before this tick's events are taken: never ahead of it
        # The link as the first aggregator's pusher sees it (the one events go to, decision 0005).
        snapshot = self.builder.build(now, time.time(), self.events.take(), self.pusher.link.report())
        self.pusher.link.on_position(snapshot.position)  # where the next outage begins or ends, if it does
        body = codec.encode(snapshot)
        if self.journal is not None:  # before the offer: the pusher's acknowledgement must find it
            # A snapshot with events is never downsampled away: its events exist nowhere else.
            self.journal.add(snapshot.boot_id, snapshot.seq, snapshot.sent_at, body, keep=bool(snapshot.events))
        # Events go to the first aggregator only (decision 0005); the journal keeps the body with them, so the
        # second one's acknowledgement of the body without them never deletes it.
        bare = codec.encode(replace(snapshot, events=())) if snapshot.events and len(self.pushers) > 1 else body
        for index, pusher in enumerate(self.pushers):
            pusher.offer(body if index == 0 else bare)
        self._publish_health(now, snapshot.seq)

    def _publish_health(self, now: float, seq: int) -> None:
        statuses = [pusher.status() for pusher in self.pushers]
        status = statuses[0]
        level, message = links_level(
            [link_level(s, now, self._started, self.params.link_error_after_s) for s in statuses]
        )
        journal_values = self._journal_values()
        if journal_values.get("journal_problem", "") not in ("", self._journal_problem):
            self._journal_problem = journal_values["journal_problem"]
            self.get_logger().error(self._journal_problem)  # each new problem once; it stays in the key-values
        if level == "OK" and self._link_level not in ("OK", "") and self.backlog is not None:
            self.backlog.wake()  # the link is back: drain now, not after the uploader's backoff
        if level != self._link_level and any(s.attempts > 0 for s in statuses):  # the first push is not news
            text = f"aggregator link {level}: {message}"
            # One call site per severity: rclpy's logger refuses a severity change at the same call site.
            if level == "OK":
                self.get_logger().info(text)
            elif level == "WARN":
                self.get_logger().warning(text)
            else:
                self.get_logger().error(text)
            self._link_level = level
        age = "never" if status.last_success is None else f"{now - status.last_success:.1f}"
        stale = self.builder.stale_inputs(now)
        values = {
            "vehicle_id": self.params.builder.vehicle_id,
            "boot_id": self.builder.boot_id,
            "aggregator_url": self.params.telemetry_url,
            "last_push_age_s": age,
            "pushes_accepted": str(status.accepted),
            "pushes_failed": str(status.failures),
            "retry_in_s": f"{status.retry_in_s:.2f}",
            "snapshots_built": str(seq),
            "max_tick_lateness_s": f"{max(self._lateness):.4f}",
            "stale_inputs": ",".join(stale),
            "error_events": str(sum(self.builder.errors.values())),
            "events_captured": str(self.events.captured),
            "events_pending": str(len(self.events.pending)),
            "rosout_filter": self.rosout_filter,
            **{f"events_dropped_{reason}": str(count) for reason, count in self.events.dropped.items()},
            **journal_values,
        }
        if len(statuses) > 1:
            second = statuses[1]
            values["second_aggregator_url"] = self.params.second_telemetry_url
            values["second_last_push_age_s"] = (
                "never" if second.last_success is None else f"{now - second.last_success:.1f}"
            )
            values["second_pushes_accepted"] = str(second.accepted)
            values["second_pushes_failed"] = str(second.failures)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [
            DiagnosticStatus(
                level=_LEVELS[level],
                name=self._health_name,
                message=message[:256],
                hardware_id=self.params.builder.vehicle_id,
                values=[KeyValue(key=k, value=v) for k, v in values.items()],
            )
        ]
        self._diag_pub.publish(array)

    def _journal_values(self) -> dict[str, str]:
        """The journal's and the backlog's state for /diagnostics (none without a journal)."""
        if self.journal is None or self.backlog is None:
            return {}
        stats, backlog = self.journal.stats(), self.backlog.status()
        oldest = "" if stats.oldest_wall_time is None else f"{time.time() - stats.oldest_wall_time:.0f}"
        return {
            "journal_entries": str(stats.entries),
            "journal_bytes": str(stats.bytes),
            "journal_oldest_age_s": oldest,
            "journal_dropped_size": str(stats.dropped_size),
            "journal_dropped_age": str(stats.dropped_age),
            "journal_downsampled": str(stats.downsampled),
            "journal_replaced": str(stats.replaced),
            "journal_problem": stats.problem,
            "backlog_state": backlog.state,
            "backlog_uploaded": str(backlog.uploaded),
            "backlog_failures": str(backlog.failures),
            "backlog_last_error": backlog.last_error,
        }

    def close(self) -> None:
        reader = self._rosout_reader
        if reader is not None:
            reader.destroy_node()
        if self.backlog is not None:
            self.backlog.close(self.params.request_timeout_s + 2.0)
        for pusher in self.pushers:
            pusher.close(self.params.request_timeout_s + 2.0)
        if self.journal is not None:
            self.journal.close()  # what the pushes did not deliver is kept for the next start
            self.events.marks.save()


def _now() -> float:
    return time.monotonic()


LEVEL_FILTER = "level >= %0"
"""The /rosout content filter: entries at the lowest level captured (its parameter) or above."""
CONTENT_FILTER_RMWS = frozenset({"rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp", "rmw_connextdds"})
"""The rmw implementations with content filters, where the bridge sets LEVEL_FILTER through rcl."""


def _rclpy_filter_options(parameters: list[str]) -> Any:
    """LEVEL_FILTER as rclpy's content filter options, or None where rclpy has none (Humble, Jazzy)."""
    try:
        options = importlib.import_module("rclpy.subscription_content_filter_options")
    except ImportError:
        return None
    return options.ContentFilterOptions(LEVEL_FILTER, parameters)


def _never_called(_msg: Log) -> None:
    """The /rosout reader's callback: its node is never spun, the bridge takes its messages in batches."""


def _plain(value: Any) -> Any:
    """A parameter value as validation expects it: arrays (array.array, tuples) as lists."""
    return list(value) if isinstance(value, list | tuple) or type(value).__name__ == "array" else value


def _message_type(sensor: str, name: str) -> Any:
    """The message class for 'pkg/msg/Type'; ParamError when it does not exist here."""
    package, _, type_name = name.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), type_name)
    except (ImportError, AttributeError):
        raise ParamError([f"{sensor_param(sensor, 'type')}: unknown message type {name!r}"]) from None


def main(args: list[str] | None = None) -> int:
    """Console script `vehicle_bridge`: 0 after a clean shutdown, EXIT_BAD_PARAMETERS (2) on bad parameters."""
    rclpy.init(args=args)
    bridge: VehicleBridge | None = None
    code = 0
    try:
        bridge = VehicleBridge()
        rclpy.spin(bridge)
    except ParamError:  # logged by the node, with its full name
        code = EXIT_BAD_PARAMETERS
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGTERM shuts the context down from rclpy's signal handler; when that lands while the executor builds
        # its wait set, spin raises RCLError ("context is not valid") instead of ExternalShutdownException
        # (seen with the Kilted wheels on a loaded machine). A shut-down context is a clean stop, anything else
        # is a failure.
        if rclpy.ok():
            raise
    finally:
        if bridge is not None:
            bridge.close()
            bridge.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
