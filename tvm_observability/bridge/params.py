"""vehicle_bridge parameters: declared once here (name, default, meaning), validated together.

The node declares every entry of PARAMETERS on itself, reads the values back and hands them to
`parse_params`, which returns a frozen BridgeParams or raises ParamError listing every problem.
No rclpy import: this module is tested without ROS.

Sensors are configured as a list of names plus, per name, `sensor.<name>.<field>` parameters
(SENSOR_FIELDS), the flat form ROS parameters allow:

    sensors: [lidar, camera]
    sensor:
      lidar: {topic: scan, type: sensor_msgs/msg/LaserScan, min_rate_hz: 5.0, diagnostic_prefix: "lidar"}
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..model import DEFAULT_VEHICLE_STATUSES, HISTORY_PATH, NAME_PATTERN, TELEMETRY_PATH, VEHICLE_ID_PATTERN
from .events import ROSOUT_LEVELS
from .snapshot import BuilderSettings, SensorSpec

MESSAGE_TYPE_PATTERN = re.compile(r"([A-Za-z][A-Za-z0-9_]*)/msg/([A-Z][A-Za-z0-9]*)")
_TOPIC_PATTERN = re.compile(r"~?/?[A-Za-z_{][A-Za-z0-9_/{}~]*")


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    dynamic_typing: bool = False
    """For list parameters whose default is empty (ROS cannot infer their type)."""
    runtime: bool = False
    """True: `ros2 param set` applies it to the running node. False (restart-only): a change is refused with
    a reason, because it shapes what the node built at start (subscriptions, the HTTP session, the boot's
    error-code budget, the vehicle's identity)."""


# runtime=True: `ros2 param set` changes it on the running node; every other parameter is restart-only.
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("vehicle_id", "", "Required. This vehicle's id, the vehicle_id label ([A-Za-z0-9_.-]{1,64})."),
    ParamSpec("aggregator_url", "http://127.0.0.1:9100", "Base URL of the telemetry_aggregator (http or https)."),
    ParamSpec(
        "second_aggregator_url",
        "",
        "Optional second aggregator (the other replica of this vehicle's shard, or a second balancer): every "
        "snapshot is pushed to both, independently. Empty: one aggregator.",
    ),
    ParamSpec("token_file", "", "File holding this vehicle's bearer token (mode 0600). Empty: no credentials."),
    ParamSpec("ca_file", "", "PEM CA bundle to verify an https aggregator. Empty: the system trust store."),
    ParamSpec("publish_period_s", 1.0, "Seconds between snapshots.", runtime=True),
    ParamSpec("request_timeout_s", 2.0, "Timeout of one push (connect + response)."),
    ParamSpec("backoff_initial_s", 1.0, "First retry delay while the aggregator is unreachable."),
    ParamSpec("backoff_max_s", 5.0, "Cap of the exponential retry delay (jittered to 50-100%)."),
    ParamSpec(
        "link_error_after_s", 10.0, "Own diagnostics go ERROR after this long without an accepted push.", runtime=True
    ),
    ParamSpec("battery_topic", "battery_state", "sensor_msgs/BatteryState topic."),
    ParamSpec("fix_topic", "fix", "sensor_msgs/NavSatFix topic."),
    ParamSpec("odom_topic", "odom", "nav_msgs/Odometry topic."),
    ParamSpec("status_topic", "vehicle_status", "std_msgs/String topic with the vehicle status."),
    ParamSpec("diagnostics_topic", "/diagnostics", "diagnostic_msgs/DiagnosticArray topic (absolute by default)."),
    ParamSpec("battery_stale_s", 30.0, "Battery older than this is reported unknown (0: never).", runtime=True),
    ParamSpec("position_stale_s", 10.0, "Position older than this is reported unknown (0: never).", runtime=True),
    ParamSpec("pose_stale_s", 5.0, "Pose older than this is reported unknown (0: never).", runtime=True),
    ParamSpec(
        "status_stale_s",
        0.0,
        "Status older than this is reported unknown (0: never; often published on change).",
        runtime=True,
    ),
    ParamSpec(
        "diagnostics_stale_s",
        10.0,
        "A diagnostic status older than this no longer counts for its sensor.",
        runtime=True,
    ),
    ParamSpec("liveness_window_s", 2.0, "Window over which sensor message rates are measured."),
    ParamSpec(
        "statuses", list(DEFAULT_VEHICLE_STATUSES), "Known vehicle statuses; others are reported unknown.", runtime=True
    ),
    ParamSpec("max_error_codes", 32, "Distinct error codes per boot; further codes count under 'other'."),
    ParamSpec("sensors", [], "Names of the sensors to watch (see sensor.<name>.* parameters).", dynamic_typing=True),
    ParamSpec(
        "journal_dir",
        "",
        "Directory of the journal of unacknowledged snapshots (relative: below the ROS home). Empty: no journal.",
    ),
    ParamSpec("journal_max_bytes", 100_000_000, "Journal size cap in bytes (oldest snapshots dropped first)."),
    ParamSpec("journal_max_age_s", 86400.0, "Journalled snapshots older than this are dropped."),
    ParamSpec("journal_flush_interval_s", 5.0, "Seconds between journal writes (what a kill -9 can lose)."),
    ParamSpec(
        "journal_downsample_after_s",
        3600.0,
        "Journalled snapshots older than this are thinned to 1 of every journal_downsample_keep_every.",
    ),
    ParamSpec(
        "journal_downsample_keep_every",
        10,
        "Beyond journal_downsample_after_s keep 1 snapshot of every N (and every one with events); 1: keep all.",
    ),
    ParamSpec(
        "backlog_max_snapshots_per_s",
        20.0,
        "Upload budget of the backlog after an outage, in snapshots per second (the live push is not counted).",
    ),
    ParamSpec("backlog_batch_size", 60, "Most snapshots in one backlog upload."),
    ParamSpec(
        "events_rosout",
        True,
        "Capture /rosout entries of the vehicle's own nodes at events_min_level or above as error events.",
    ),
    ParamSpec("events_min_level", "ERROR", "Lowest /rosout level captured: WARN, ERROR or FATAL."),
    ParamSpec(
        "events_rosout_filter",
        True,
        "Ask the middleware to drop /rosout entries below events_min_level before the bridge receives them "
        "(a DDS content filter; where the middleware has none, the bridge drops them by their level byte).",
    ),
    ParamSpec(
        "events_namespace",
        "",
        "Namespace of the vehicle's own nodes (/rosout is not namespaced): only their entries are captured. "
        "Empty: the bridge's own namespace (every node when it runs in /).",
    ),
    ParamSpec(
        "events_max_per_push",
        20,
        "Most error events in one snapshot (at most the aggregator's limits.max_events_per_push).",
    ),
    ParamSpec("events_max_per_minute", 60, "Most error events captured per minute; more are dropped and counted."),
    ParamSpec("events_max_pending", 200, "Most error events waiting for a snapshot; more are dropped and counted."),
)

SENSOR_FIELDS: tuple[ParamSpec, ...] = (
    ParamSpec("topic", "", "Topic whose message rate shows liveness (relative by default). Empty: diagnostics only."),
    ParamSpec("type", "", "Message type of the topic, e.g. sensor_msgs/msg/LaserScan."),
    ParamSpec("min_rate_hz", 1.0, "Below this rate over liveness_window_s the sensor is stale."),
    ParamSpec("diagnostic_prefix", "", "Diagnostic statuses whose name starts with this belong to the sensor."),
)


def default_values() -> dict[str, Any]:
    """Every PARAMETERS entry at its default (vehicle_id empty, so not yet valid)."""
    return {spec.name: list(spec.default) if isinstance(spec.default, list) else spec.default for spec in PARAMETERS}


EXIT_BAD_PARAMETERS = 2
"""vehicle_bridge's exit code when its parameters are unusable (the launch files stop instead of respawning)."""


class ParamError(Exception):
    """Unusable parameters; `problems` names each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid vehicle_bridge parameters:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Topics:
    battery: str
    fix: str
    odom: str
    status: str
    diagnostics: str


@dataclass(frozen=True, slots=True)
class JournalParams:
    directory: str
    """This vehicle's journal directory: <journal_dir>/<vehicle_id>, so bridges sharing a host never share one."""
    max_bytes: int
    max_age_s: float
    flush_interval_s: float
    downsample_after_s: float
    downsample_keep_every: int
    history_url: str
    """Where the backlog is uploaded (the aggregator's HISTORY_PATH)."""
    max_snapshots_per_s: float
    batch_size: int


@dataclass(frozen=True, slots=True)
class EventParams:
    """The events_* parameters (bridge/events.py)."""

    rosout: bool
    min_level: str
    rosout_filter: bool
    namespace: str
    max_per_push: int
    max_per_minute: int
    max_pending: int


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How one aggregator client (the live `Pusher`, the `BacklogUploader`) reaches its URL: built here, from the
    parameters, by `BridgeParams.live_clients` and `BridgeParams.backlog_client`."""

    url: str
    vehicle_id: str
    request_timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    token: str | None = field(default=None, repr=False)
    """The bearer token (read from token_file by the node); None: no credentials."""
    ca_file: str = ""


BACKLOG_MIN_REQUEST_TIMEOUT_S = 10.0
"""A backlog batch is larger than one push and written to history before the answer: at least this long."""
BACKLOG_MIN_BACKOFF_MAX_S = 30.0
"""The backlog retries at most this often while failing: it is never urgent, the live push is."""


@dataclass(frozen=True, slots=True)
class BridgeParams:
    builder: BuilderSettings
    telemetry_url: str
    token_file: str
    ca_file: str
    publish_period_s: float
    request_timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    link_error_after_s: float
    topics: Topics
    journal: JournalParams | None
    """None: no journal (journal_dir empty)."""
    second_telemetry_url: str = ""
    """The telemetry URL of `second_aggregator_url`; empty: none."""
    events: EventParams | None = None
    """None only where a test builds BridgeParams by hand."""

    @property
    def telemetry_urls(self) -> tuple[str, ...]:
        """Every aggregator a snapshot goes to, each through its own pusher."""
        return (self.telemetry_url, self.second_telemetry_url) if self.second_telemetry_url else (self.telemetry_url,)

    def live_clients(self, token: str | None) -> tuple[ClientSettings, ...]:
        """One client per aggregator (`telemetry_urls`), for the live pushers."""
        return tuple(
            ClientSettings(
                url=url,
                vehicle_id=self.builder.vehicle_id,
                request_timeout_s=self.request_timeout_s,
                backoff_initial_s=self.backoff_initial_s,
                backoff_max_s=self.backoff_max_s,
                token=token,
                ca_file=self.ca_file,
            )
            for url in self.telemetry_urls
        )

    def backlog_client(self, token: str | None) -> ClientSettings | None:
        """The backlog uploader's client (the first aggregator's history endpoint); None without a journal."""
        if self.journal is None:
            return None
        return replace(
            self.live_clients(token)[0],
            url=self.journal.history_url,
            request_timeout_s=max(self.request_timeout_s, BACKLOG_MIN_REQUEST_TIMEOUT_S),
            backoff_max_s=max(self.backoff_max_s, BACKLOG_MIN_BACKOFF_MAX_S),
        )


def sensor_param(sensor: str, field: str) -> str:
    return f"sensor.{sensor}.{field}"


class _Reader:
    def __init__(self, values: Mapping[str, Any], problems: list[str]) -> None:
        self.values = values
        self.problems = problems

    def number(self, name: str, low: float, high: float, *, integer: bool = False) -> float:
        value = self.values[name]
        ok = type(value) is int if integer else type(value) in (int, float)
        if not ok or not math.isfinite(value) or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            self.problems.append(f"{name}: must be {kind} in [{low:g}, {high:g}], got {value!r}")
            return low
        return float(value)

    def topic(self, name: str) -> str:
        value = self.values[name]
        if not isinstance(value, str) or _TOPIC_PATTERN.fullmatch(value) is None:
            self.problems.append(f"{name}: not a valid topic name: {value!r}")
            return "invalid"
        return value


def parse_params(values: Mapping[str, Any]) -> BridgeParams:
    """Validate the declared values (PARAMETERS plus sensor.<name>.* for each listed sensor)."""
    problems: list[str] = []
    r = _Reader(values, problems)
    vehicle_id = values["vehicle_id"]
    if not isinstance(vehicle_id, str) or VEHICLE_ID_PATTERN.fullmatch(vehicle_id) is None:
        problems.append(
            "vehicle_id: required, must match [A-Za-z0-9_.-]{1,64} "
            f"(got {vehicle_id!r}; set it with -p vehicle_id:=V5 or the launch argument)"
        )
    telemetry_url = _telemetry_url(values["aggregator_url"], problems)
    second = values["second_aggregator_url"]
    second_url = _telemetry_url(second, problems, "second_aggregator_url") if second != "" else ""
    if second_url and second_url == telemetry_url:
        problems.append(
            "second_aggregator_url: the same as aggregator_url; give the other replica's URL or leave it empty"
        )
    journal = _journal(values, r, str(vehicle_id), telemetry_url)
    token_file = _readable(values["token_file"], "token_file", problems)
    ca_file = _readable(values["ca_file"], "ca_file", problems)
    if ca_file and telemetry_url.startswith("http:") and not second_url.startswith("https:"):
        problems.append("ca_file: set, but aggregator_url is not https")
    period = r.number("publish_period_s", 0.05, 3600.0)
    stale = {name: r.number(name, 0.0, 86400.0) for name in _STALE_PARAMS}
    backoff_initial = r.number("backoff_initial_s", 0.01, 3600.0)
    backoff_max = r.number("backoff_max_s", 0.01, 3600.0)
    if backoff_max < backoff_initial:
        problems.append("backoff_max_s: must be at least backoff_initial_s")
    statuses = values["statuses"]
    if not _strings(statuses) or not statuses or any(NAME_PATTERN.fullmatch(s) is None for s in statuses):
        problems.append(f"statuses: must be a non-empty list of names matching {NAME_PATTERN.pattern}")
        statuses = list(DEFAULT_VEHICLE_STATUSES)
    builder = BuilderSettings(
        vehicle_id=str(vehicle_id),
        statuses=tuple(statuses),
        sensors=_sensors(values, r),
        battery_stale_s=stale["battery_stale_s"],
        position_stale_s=stale["position_stale_s"],
        pose_stale_s=stale["pose_stale_s"],
        status_stale_s=stale["status_stale_s"],
        diagnostics_stale_s=r.number("diagnostics_stale_s", 0.1, 86400.0),
        liveness_window_s=r.number("liveness_window_s", 0.1, 600.0),
        max_error_codes=int(r.number("max_error_codes", 2, 64, integer=True)),
    )
    params = BridgeParams(
        builder=builder,
        telemetry_url=telemetry_url,
        second_telemetry_url=second_url,
        token_file=token_file,
        ca_file=ca_file,
        publish_period_s=period,
        request_timeout_s=r.number("request_timeout_s", 0.05, 600.0),
        backoff_initial_s=backoff_initial,
        backoff_max_s=backoff_max,
        link_error_after_s=r.number("link_error_after_s", 0.1, 86400.0),
        topics=Topics(
            battery=r.topic("battery_topic"),
            fix=r.topic("fix_topic"),
            odom=r.topic("odom_topic"),
            status=r.topic("status_topic"),
            diagnostics=r.topic("diagnostics_topic"),
        ),
        journal=journal,
        events=_events(values, r),
    )
    if problems:
        raise ParamError(problems)
    return params


def _events(values: Mapping[str, Any], r: _Reader) -> EventParams:
    rosout, level, namespace = values["events_rosout"], values["events_min_level"], values["events_namespace"]
    for name in ("events_rosout", "events_rosout_filter"):
        if type(values[name]) is not bool:
            r.problems.append(f"{name}: must be true or false, got {values[name]!r}")
    if level not in ROSOUT_LEVELS:
        r.problems.append(f"events_min_level: must be one of {', '.join(ROSOUT_LEVELS)}, got {level!r}")
        level = "ERROR"
    if not isinstance(namespace, str) or (namespace and _TOPIC_PATTERN.fullmatch(namespace) is None):
        r.problems.append(f"events_namespace: must be a namespace such as /v5, or empty, got {namespace!r}")
        namespace = ""
    return EventParams(
        rosout=rosout is True,
        min_level=str(level),
        rosout_filter=values["events_rosout_filter"] is True,
        namespace=namespace,
        max_per_push=int(r.number("events_max_per_push", 1, 10_000, integer=True)),
        max_per_minute=int(r.number("events_max_per_minute", 1, 100_000, integer=True)),
        max_pending=int(r.number("events_max_pending", 1, 100_000, integer=True)),
    )


_RUNTIME = frozenset(spec.name for spec in PARAMETERS if spec.runtime)


def update_params(current: Mapping[str, Any], changes: Mapping[str, Any]) -> BridgeParams:
    """The running node's parameters after `changes` (name -> new value) to its `current` values.

    Raises ParamError naming each refused change: a restart-only parameter (`sensor.<name>.*` included), or a
    value that does not validate together with the others. Nothing is applied unless everything is valid.
    """
    restart_only = [name for name in changes if name not in _RUNTIME]
    if restart_only:
        raise ParamError([f"{name}: restart-only; set it in the params file and restart" for name in restart_only])
    return parse_params({**current, **changes})


_STALE_PARAMS = ("battery_stale_s", "position_stale_s", "pose_stale_s", "status_stale_s")


def _strings(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _sensors(values: Mapping[str, Any], r: _Reader) -> tuple[SensorSpec, ...]:
    names = values["sensors"]
    if not _strings(names):
        r.problems.append(f"sensors: must be a list of sensor names, got {names!r}")
        return ()
    specs: list[SensorSpec] = []
    for name in names:
        if NAME_PATTERN.fullmatch(name) is None or "." in name:
            r.problems.append(f"sensors: {name!r} is not a valid sensor name ([A-Za-z0-9_:/-], no dots)")
            continue
        if name in (s.name for s in specs):
            r.problems.append(f"sensors: {name!r} is listed twice")
            continue
        topic_key, type_key = sensor_param(name, "topic"), sensor_param(name, "type")
        topic, message_type = values.get(topic_key, ""), values.get(type_key, "")
        prefix = values.get(sensor_param(name, "diagnostic_prefix"), "")
        if topic:
            r.topic(topic_key)
            if not isinstance(message_type, str) or MESSAGE_TYPE_PATTERN.fullmatch(message_type) is None:
                r.problems.append(f"{type_key}: must be a type like sensor_msgs/msg/LaserScan, got {message_type!r}")
        elif not prefix:
            r.problems.append(f"sensor.{name}: needs a topic or a diagnostic_prefix (or both)")
        rate = r.number(sensor_param(name, "min_rate_hz"), 0.0, 10000.0) if topic else 0.0
        specs.append(SensorSpec(name, str(topic), str(message_type), rate, str(prefix)))
    return tuple(specs)


def ros_home() -> Path:
    """ROS 2's home directory: $ROS_HOME, else ~/.ros."""
    return Path(os.environ.get("ROS_HOME") or Path.home() / ".ros")


def _journal(values: Mapping[str, Any], r: _Reader, vehicle_id: str, telemetry_url: str) -> JournalParams | None:
    raw = values["journal_dir"]
    settings = (
        int(r.number("journal_max_bytes", 100_000, 2**40, integer=True)),
        r.number("journal_max_age_s", 60.0, 30 * 86400.0),
        r.number("journal_flush_interval_s", 0.1, 60.0),
        r.number("backlog_max_snapshots_per_s", 0.1, 10_000.0),
        int(r.number("backlog_batch_size", 1, 1000, integer=True)),
        r.number("journal_downsample_after_s", 60.0, 30 * 86400.0),
        int(r.number("journal_downsample_keep_every", 1, 3600, integer=True)),
    )
    if not isinstance(raw, str) or "\0" in raw:
        r.problems.append(f"journal_dir: must be a directory path or empty, got {raw!r}")
        return None
    if not raw:
        return None
    max_bytes, max_age_s, flush_s, rate, batch, downsample_after_s, keep_every = settings
    return JournalParams(
        directory=str(ros_home() / raw / vehicle_id),  # an absolute journal_dir replaces the ROS home
        max_bytes=max_bytes,
        max_age_s=max_age_s,
        flush_interval_s=flush_s,
        downsample_after_s=downsample_after_s,
        downsample_keep_every=keep_every,
        history_url=telemetry_url.removesuffix(TELEMETRY_PATH) + HISTORY_PATH,
        max_snapshots_per_s=rate,
        batch_size=batch,
    )


def _telemetry_url(raw: Any, problems: list[str], name: str = "aggregator_url") -> str:
    problem = f"{name}: must be an http:// or https:// URL with a host, got {raw!r}"
    if not isinstance(raw, str):
        problems.append(problem)
        return ""
    try:
        parts = urlsplit(raw)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        problems.append(problem)
        return ""
    if parts.username or parts.password:
        problems.append(f"{name}: must not carry credentials (use token_file)")
        return ""
    return raw.rstrip("/") + TELEMETRY_PATH


def _readable(raw: Any, name: str, problems: list[str]) -> str:
    if not isinstance(raw, str):
        problems.append(f"{name}: must be a file path")
        return ""
    if raw and not os.access(raw, os.R_OK):
        problems.append(f"{name}: cannot read {raw!r} (missing or no permission)")
        return ""
    return raw


def read_token(path: str) -> tuple[str, str | None]:
    """The bearer token in `path` and a warning if the file is readable by group or others."""
    file = Path(path)
    try:
        token = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError([f"token_file: cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}"]) from None
    if not token or any(c.isspace() for c in token):
        raise ParamError([f"token_file: {path!r} must hold exactly one token"])
    mode = stat.S_IMODE(file.stat().st_mode)
    warning = None
    if mode & 0o077:
        warning = f"token_file {path} is readable by group or others (mode {mode:04o}); chmod 600 it"
    return token, warning
