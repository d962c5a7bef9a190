"""Aggregator configuration: YAML parsed once into a frozen dataclass; every problem reported together.

Each config key is declared once, as a dataclass field made by `key(...)`: its default, how it is read and
checked (its `Kind`), whether a SIGHUP reload applies it or it waits for a restart, and its one-line doc.
That declaration drives validation, defaults, the reload's `needs_restart` list (settings.py) and the key
table of docs/configuration.md (`reference_table`, checked by the tests). A new key is one `key(...)` line in
the dataclass of its section.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import math
import reprlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

import yaml

from ..auth import TOKEN_SHA256_PATTERN
from ..model import NAME_PATTERN, OFFLINE_STATUS, UNKNOWN_STATUS, VEHICLE_ID_PATTERN
from .event_log import DEFAULT_EVENTS_FILE, DEFAULT_RECENT
from .files import NotARegularFile, open_regular
from .fleet import FleetSettings
from .geofence import GeofenceSettings, Zones, ZonesError, parse_zones_text
from .history import DEFAULT_MAX_BATCH_SNAPSHOTS
from .ingest import IngestLimits
from .ratelimit import RateSettings
from .shards import SHARD_NAME_PATTERN, ShardMap, ShardMapError, ownership_problems
from .shards import parse as parse_shard_map

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9100
LOG_LEVELS = ("debug", "info", "warning", "error")

_FLEET = FleetSettings()
_INGEST = IngestLimits()
_RATE = RateSettings()
_GEOFENCE = GeofenceSettings()
"""Defaults of what the config feeds: each is written once, in the component that uses it."""


class ConfigError(Exception):
    """The configuration is unusable; `problems` names each bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{listing}")


# -- the declaration of a key ----------------------------------------------------------------------

INVALID: Any = object()
"""What a `Kind` returns for a value it refused (after recording why)."""


class Kind(Protocol):
    """How one key's YAML value is checked and turned into its config value."""

    @property
    def doc(self) -> str:
        """The type column of the reference table."""

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        """The config value, or INVALID with the reason appended to `problems` as `path: reason`."""


@dataclass(frozen=True)
class Key:
    """One config key: how it is read, whether a reload applies it, what it means."""

    kind: Kind
    reloads: bool
    doc: str
    default_doc: str | None = None
    """The default as the reference table shows it, when the value itself does not say it well."""


REQUIRED: Any = object()
"""The default of a key that has none: it must be given."""


def key(default: Any, kind: Kind, doc: str, *, reloads: bool = True, default_doc: str | None = None) -> Any:
    """A config dataclass field: `default` (REQUIRED for none), its kind, reload mark and doc."""
    metadata = {"key": Key(kind, reloads, doc, default_doc)}
    if default is REQUIRED:
        return field(metadata=metadata)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def keys_of(cls: Any) -> Iterator[tuple[dataclasses.Field[Any], Key]]:
    """The config keys a section dataclass declares, in order."""
    for f in dataclasses.fields(cls):
        if "key" in f.metadata:
            yield f, f.metadata["key"]


def _show(value: Any) -> str:
    """A bounded repr for messages: a huge or deeply nested value never makes a huge message."""
    return reprlib.repr(value)


def _fail(problems: list[str], path: str, message: str) -> Any:
    problems.append(f"{path}: {message}")
    return INVALID


# -- kinds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    doc: str = "bool"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        return value if type(value) is bool else _fail(problems, path, f"must be true or false, got {_show(value)}")


@dataclass(frozen=True)
class Number:
    """A finite number (or integer) from `low` up to 2**53 (beyond it floats lose whole numbers)."""

    low: float
    integer: bool = False
    HIGH: ClassVar[int] = 2**53

    @property
    def doc(self) -> str:
        return f"{'int' if self.integer else 'number'} ≥ {self.low:g}"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        kind = "an integer" if self.integer else "a number"
        valid = type(value) is int if self.integer else type(value) in (int, float)
        if not valid or (type(value) is float and not math.isfinite(value)) or value < self.low:
            return _fail(problems, path, f"must be {kind} >= {self.low:g}, got {_show(value)}")
        if value > self.HIGH:
            return _fail(problems, path, f"must be {kind} <= 2**53, got {_show(value)}")
        return value if self.integer else float(value)


@dataclass(frozen=True)
class Text:
    doc: str = "string"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if isinstance(value, str) and value:
            return value
        return _fail(problems, path, f"must be a non-empty string, got {_show(value)}")


@dataclass(frozen=True)
class OptionalPath:
    doc: str = "path or null"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if value is None or (isinstance(value, str) and value and "\0" not in value):
            return value
        return _fail(problems, path, f"must be a path or null, got {_show(value)}")


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    @property
    def doc(self) -> str:
        return ", ".join(self.options)

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if isinstance(value, str) and value in self.options:
            return value
        return _fail(problems, path, f"must be one of {', '.join(self.options)}, got {_show(value)}")


@dataclass(frozen=True)
class Statuses:
    doc: str = "list of names"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(value, list) or not value:
            return _fail(problems, path, "must be a non-empty list of status names")
        bad = [s for s in value if not isinstance(s, str) or NAME_PATTERN.fullmatch(s) is None]
        if bad:
            return _fail(problems, path, f"names must match {NAME_PATTERN.pattern}: {_show(bad)}")
        reserved = [s for s in value if s in (OFFLINE_STATUS, UNKNOWN_STATUS)]
        if reserved:
            _fail(problems, path, f"'offline' and 'unknown' are always present and may not be listed: {reserved!r}")
        if len(set(value)) != len(value):
            return _fail(problems, path, "names must be unique")
        return INVALID if reserved else tuple(value)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Networks:
    doc: str = "list of addresses or CIDR networks"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(value, list):
            return _fail(problems, path, "must be a list of addresses or CIDR networks, e.g. [10.0.0.5, 10.1.0.0/16]")
        networks = []
        for item in value:
            try:
                if not isinstance(item, str):
                    raise ValueError("not a string")
                networks.append(ipaddress.ip_network(item, strict=True))
            except ValueError as exc:
                _fail(problems, path, f"{_show(item)} is not an address or CIDR network: {exc}")
                continue
            if networks[-1].prefixlen == 0:
                _fail(problems, path, f"{item} trusts every address: any client could then name its own address")
                networks.pop()
        return tuple(networks) if len(networks) == len(value) else INVALID


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Listen:
    doc: str = "`HOST:PORT`"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        try:
            return ListenAddress(*parse_listen(value))
        except ValueError as exc:
            return _fail(problems, path, str(exc))


@dataclass(frozen=True)
class PemFile:
    """The path of a file that must be readable when the config is loaded."""

    doc: str = "PEM path"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if not _is_path(value):
            return _fail(problems, path, f"must be the path of a PEM file, got {_show(value)}")
        try:
            with open_regular(value):
                pass
        except NotARegularFile:
            return _fail(problems, path, f"{value} is not a regular file")
        except OSError as exc:
            return _fail(problems, path, f"cannot read {value}: {exc.strerror or exc}")
        return value


@dataclass(frozen=True)
class ZonesFile:
    """A GeoJSON zones file, read and validated whenever the config is (at start and on every reload)."""

    doc: str = "GeoJSON path"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if _is_path(value):
            try:
                return parse_zones_text(read_text(value), source=value)
            except (ConfigError, ZonesError) as exc:
                problems.extend(f"{path}: {value}: {problem}" for problem in exc.problems)
                return INVALID
        return _fail(problems, path, f"must be the path of a GeoJSON zones file, got {_show(value)}")


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "\0" not in value


@dataclass(frozen=True)
class Sha256:
    doc: str = "sha256 hex"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if value is None or (isinstance(value, str) and TOKEN_SHA256_PATTERN.fullmatch(value) is not None):
            return value
        return _fail(problems, path, "must be 64 lowercase hex characters (a sha256)")


@dataclass(frozen=True)
class Username:
    doc: str = "string"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if value is None or (isinstance(value, str) and value and ":" not in value):
            return value
        return _fail(problems, path, "must be a non-empty string without ':'")


Rule = Callable[[Mapping[Any, Any], str], list[str]]


@dataclass(frozen=True)
class Section:
    """A mapping whose keys are declared by the `key(...)` fields of `cls`; `rule` checks keys together."""

    cls: Any
    rule: Rule | None = None
    doc: str = "mapping"
    null_is_default: ClassVar[bool] = True

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(value, dict):
            return _fail(problems, path, f"must be a mapping with keys {', '.join(_names(self.cls))}")
        return read_section(self.cls, value, problems, prefix=f"{path}.", rule=self.rule)


def read_section(
    cls: Any, raw: Mapping[Any, Any], problems: list[str], *, prefix: str = "", rule: Rule | None = None
) -> Any:
    """Read every declared key of `cls` from `raw`: unknown keys, bad values and `rule` are all reported.

    An absent key (or null, for a section or the roster) keeps its default; a required key is read as null,
    so its kind says what is missing. INVALID when a required key is bad."""
    problems.extend(f"{prefix}{name}: unknown key" for name in sorted(map(str, raw)) if name not in _names(cls))
    values: dict[str, Any] = {}
    complete = True
    for f, spec in keys_of(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        given = raw.get(f.name)
        if not required and (f.name not in raw or (given is None and getattr(spec.kind, "null_is_default", False))):
            continue
        value = spec.kind.read(given, prefix + f.name, problems)
        if value is INVALID:
            complete = complete and not required
        else:
            values[f.name] = value
    if rule is not None:
        problems.extend(rule(raw, prefix.rstrip(".")))
    return cls(**values) if complete else INVALID


def _names(cls: Any) -> list[str]:
    return [f.name for f, _ in keys_of(cls)]


# -- the configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Guards against oversized input, label explosion and runaway clients."""

    max_body_bytes: int = key(64 * 1024, Number(256, integer=True), "larger pushes get 413")
    max_sensors_per_vehicle: int = key(
        _INGEST.max_sensors, Number(1, integer=True), "sensors in one push (more: 422 `limit_sensors`)"
    )
    max_sensor_series_per_vehicle: int = key(
        _FLEET.max_sensor_series,
        Number(1, integer=True),
        "distinct sensor names a vehicle may introduce over time, each a `sensor` series; later names are "
        "counted under `other`",
    )
    max_error_codes_per_push: int = key(
        _INGEST.max_error_codes, Number(1, integer=True), "error codes in one push (more: 422 `limit_error_codes`)"
    )
    max_events_per_push: int = key(
        _INGEST.max_events,
        Number(1, integer=True),
        "vehicle events in one push (more: 422 `limit_events`); added in 0.2.0 ([events](events.md))",
    )
    max_error_codes_per_vehicle: int = key(
        _FLEET.max_error_code_series,
        Number(1, integer=True),
        "`error_code` series per vehicle, `other` included: the first N-1 codes get their own, the events "
        "of later codes count under `other`",
    )
    max_unknown_vehicles: int = key(
        _FLEET.max_unknown_vehicles,
        Number(0, integer=True),
        "accepted vehicles outside the roster, when `allow_unknown_vehicles`",
    )
    rate_limit_per_vehicle_hz: float = key(
        _RATE.rate_hz, Number(0.1), "sustained pushes per second per vehicle; above it 429"
    )
    rate_limit_burst: int = key(
        _RATE.burst, Number(1, integer=True), "pushes a vehicle may send at once before the rate applies"
    )
    body_timeout_s: float = key(
        10.0,
        Number(0.1),
        "a push body must arrive within this time after its headers, else 408 (slow-body clients)",
    )
    idle_timeout_s: float = key(
        75.0,
        Number(0.5),
        "a connection that completes no request within this time is closed (idle keep-alive, headers that never end)",
        reloads=False,
    )
    max_connections: int = key(
        10_000,
        Number(1, integer=True),
        "client connections open at once; kept below the file descriptor limit (the soft `RLIMIT_NOFILE` is raised to "
        "the hard one at start, 256 descriptors stay free; a warning is logged when the limit is lower). When every "
        "connection is busy with requests a new one is reset; when some are still pending, the oldest pending one "
        "is cut instead. A fleet keeps one keep-alive connection per vehicle: size it to the fleet plus scrapers "
        "and headroom",
    )
    max_pending_connections: int = key(
        1_000,
        Number(1, integer=True),
        "connections that have not yet sent the complete headers of a first request (TLS handshake included), about "
        "50 KiB each on the TLS port; past it the oldest pending connection is cut for the new one, so idle "
        "connections cannot lock out real clients",
    )
    max_pending_connections_per_source: int = key(
        100,
        Number(1, integer=True),
        "pending connections per client address; past it new ones from that address are reset. Addresses in "
        "`trusted_proxies` are exempt (a balancer carries many vehicles)",
    )
    tls_handshake_timeout_s: float = key(
        10.0, Number(0.1), "a TLS handshake must complete within this time (asyncio's default is 60 s)"
    )
    header_timeout_s: float = key(
        15.0,
        Number(0.1),
        "a new connection must send the complete headers of its first request within this time of the accept "
        "(handshake included); later requests on a kept-alive connection are governed by `idle_timeout_s`",
    )


@dataclass(frozen=True)
class OptionalText:
    doc: str = "string or null"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        return None if value is None else Text().read(value, path, problems)


@dataclass(frozen=True)
class OptionalUrl:
    doc: str = "http(s) URL or null"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if value is None:
            return None
        problem = f"must be an http:// or https:// URL with a host and no credentials, got {_show(value)}"
        if not isinstance(value, str):
            return _fail(problems, path, problem)
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            return _fail(problems, path, problem)
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.username:
            return _fail(problems, path, problem)
        return value


@dataclass(frozen=True)
class OptionalFile:
    """A file that must be readable when the config is loaded, or null."""

    doc: str = "file path or null"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        return None if value is None else PemFile(self.doc).read(value, path, problems)


def _history_rule(raw: Mapping[Any, Any], path: str) -> list[str]:
    problems = []
    url = raw.get("remote_write_url")
    if url is not None and (raw.get("job") is None or raw.get("instance") is None):
        problems.append(f"{path}: remote_write_url needs job and instance (the labels the scrape gives the series)")
    if (raw.get("basic_username") is None) != (raw.get("basic_password_file") is None):
        problems.append(f"{path}: basic_username and basic_password_file go together")
    if raw.get("ca_file") is not None and not (isinstance(url, str) and url.startswith("https:")):
        problems.append(f"{path}: ca_file is set, but remote_write_url is not https")
    return problems


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """Backlog batches from vehicles' journals (POST /api/v1/telemetry/history, docs/history.md)."""

    max_batch_snapshots: int = key(
        DEFAULT_MAX_BATCH_SNAPSHOTS, Number(1, integer=True), "snapshots in one history batch (more: 413 `limit_batch`)"
    )
    max_body_bytes: int = key(1024 * 1024, Number(256, integer=True), "larger history batches get 413 `too_large`")
    remote_write_url: str | None = key(
        None,
        OptionalUrl(),
        "Prometheus remote-write endpoint (`…/api/v1/write`) the backlog's values are written to; while set, a "
        "vehicle's value series are exported only while it is online ([history](history.md))",
        default_doc="off: counts merged, values not written",
    )
    job: str | None = key(None, OptionalText(), "the `job` label the scrape gives the aggregator's series")
    instance: str | None = key(None, OptionalText(), "the `instance` label the scrape gives the aggregator's series")
    max_sample_age_s: float = key(
        86400.0,
        Number(1),
        'older samples are dropped (`telemetry_history_snapshots_dropped_total{reason="too_old"}`): for Prometheus '
        "at most its `out_of_order_time_window`; for VictoriaMetrics the journal horizon, below its retention "
        "([history](history.md))",
    )
    timeout_s: float = key(10.0, Number(0.1), "timeout of one remote write; on failure the vehicle gets 503")
    ca_file: str | None = key(
        None,
        OptionalFile("PEM path or null"),
        "CA bundle to verify an https `remote_write_url` (certificates are always verified); null: the system "
        "trust store",
        reloads=False,
    )
    basic_username: str | None = key(
        None, Username(), "HTTP basic auth towards the endpoint: this user, with `basic_password_file`", reloads=False
    )
    basic_password_file: str | None = key(
        None,
        OptionalFile(),
        "file holding the basic auth password (one line; mode 0600): the password is never in the config or a log",
        reloads=False,
    )


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """Vehicle error events written to their own JSON-lines file ([events](events.md))."""

    file: str = key(
        DEFAULT_EVENTS_FILE,
        Text(),
        "the vehicle events file, one JSON line per event, never the service's own log; the default is in the "
        "unit's `LogsDirectory=`",
        reloads=False,
    )
    max_bytes: int = key(
        50 * 1024 * 1024,
        Number(4096, integer=True),
        "the file is rotated when a line would take it past this size",
        reloads=False,
    )
    backup_count: int = key(
        5, Number(1, integer=True), "rotated files kept (`….jsonl.1` … `.N`); the oldest is deleted", reloads=False
    )
    max_per_vehicle_per_minute: int = key(
        120,
        Number(1, integer=True),
        "events written per vehicle per minute; more are dropped and counted (`vehicle_log_events_dropped_total"
        '{reason="rate"}`)',
        reloads=False,
    )
    recent_per_vehicle: int = key(
        DEFAULT_RECENT,
        Number(0, integer=True),
        "last events of each vehicle shown on the status page and `/api/v1/vehicles`",
        reloads=False,
    )


@dataclass(frozen=True, slots=True)
class VehicleEntry:
    """A roster vehicle: expected from start-up, with the hash of its bearer token."""

    token_sha256: str | None = key(None, Sha256(), "sha256 of the vehicle's bearer token")


@dataclass(frozen=True)
class Roster:
    """vehicle id -> VehicleEntry; a token hash may belong to one vehicle only."""

    doc: str = "map id → `{token_sha256: hex}`"
    null_is_default: ClassVar[bool] = True

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(value, dict):
            return _fail(problems, path, "must be a mapping of vehicle id to {token_sha256: ...}")
        roster: dict[str, VehicleEntry] = {}
        owner: dict[str, str] = {}
        for vid, raw_entry in value.items():
            where = f"{path}.{vid}"
            if not isinstance(vid, str) or VEHICLE_ID_PATTERN.fullmatch(vid) is None:
                _fail(problems, where, f"vehicle id must match {VEHICLE_ID_PATTERN.pattern}")
                continue
            entry = {} if raw_entry is None else raw_entry
            if not isinstance(entry, dict):
                _fail(problems, where, "must be a mapping such as {token_sha256: <hex>}")
                continue
            read = read_section(VehicleEntry, entry, problems, prefix=f"{where}.")
            if read is INVALID:
                continue
            digest = read.token_sha256
            if digest is not None and digest in owner:
                _fail(
                    problems,
                    f"{where}.token_sha256",
                    f"the same token hash as {path}.{owner[digest]}: one token would write both vehicles; "
                    "give each vehicle its own token",
                )
                continue
            if digest is not None:
                owner[digest] = vid
            roster[vid] = read
        return roster


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Serve HTTPS with this certificate chain and private key (PEM files)."""

    cert_file: str = key(REQUIRED, PemFile(), "certificate chain, leaf first; readable when the config loads")
    key_file: str = key(REQUIRED, PemFile(), "private key of the certificate; readable when the config loads")


@dataclass(frozen=True, slots=True)
class ReadAuth:
    """Credentials that may read /metrics and the status page (as Prometheus sends them).

    Only hashes are kept: a bearer token's sha256, and for basic auth a username with its password's sha256.
    """

    bearer_token_sha256: str | None = key(
        None,
        Sha256(),
        "`/metrics`, the status page `/`, `/api/v1/vehicles` and `/api/v1/zones` need `Authorization: Bearer "
        "<token>` with this token's SHA-256",
    )
    basic_username: str | None = key(
        None, Username(), "or HTTP basic auth: this user, with `basic_password_sha256` (both or neither)"
    )
    basic_password_sha256: str | None = key(
        None, Sha256(), "the SHA-256 of the basic auth password; either credential is accepted when both are set"
    )


def _read_auth_rule(raw: Mapping[Any, Any], path: str) -> list[str]:
    problems = []
    if ("basic_username" in raw) != ("basic_password_sha256" in raw):
        problems.append(f"{path}: basic_username and basic_password_sha256 go together")
    if "bearer_token_sha256" not in raw and "basic_username" not in raw:
        problems.append(f"{path}: needs bearer_token_sha256, or basic_username with basic_password_sha256")
    return problems


@dataclass(frozen=True)
class ShardName:
    doc: str = "shard name"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if isinstance(value, str) and SHARD_NAME_PATTERN.fullmatch(value) is not None:
            return value
        return _fail(problems, path, f"must match {SHARD_NAME_PATTERN.pattern}, got {_show(value)}")


@dataclass(frozen=True)
class ShardMapFile:
    """The path of an ownership map (shards.py), read and checked when the config is loaded."""

    doc: str = "map path"

    def read(self, value: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(value, str) or not value or "\0" in value:
            return _fail(problems, path, f"must be the path of a shard map file, got {_show(value)}")
        try:
            return parse_shard_map(Path(value).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(problems, path, f"cannot read {value}: {getattr(exc, 'strerror', None) or exc}")
        except ShardMapError as exc:
            problems.extend(f"{path}: {value}: {problem}" for problem in exc.problems)
            return INVALID


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """This aggregator's shard in a sharded deployment (docs/scaling.md)."""

    name: str = key(
        REQUIRED, ShardName(), "the shard this aggregator serves (both replicas of a shard: the same)", reloads=False
    )
    map_file: ShardMap = key(
        REQUIRED,
        ShardMapFile(),
        "the ownership map written by `telemetry_aggregator shard-map`, the one HAProxy routes by; re-read on "
        "SIGHUP; this aggregator exports the roster vehicles the map gives its shard, and others only while "
        "they push to it",
    )


@dataclass(frozen=True, slots=True)
class GeofenceConfig:
    """Operating areas and keep-out zones (docs/geofences.md)."""

    file: Zones = key(
        REQUIRED,
        ZonesFile(),
        "GeoJSON zones file (RFC 7946 `[longitude, latitude]`), read again on every reload; a file with any "
        "problem refuses the reload (every problem logged) and the running zones stay",
    )
    margin_m: float = key(
        _GEOFENCE.margin_m,
        Number(0),
        "hysteresis: a violation ends only once the fix is this many meters (plus its accuracy) back across the "
        "boundary, so GNSS jitter narrower than this cannot flap the status",
    )
    max_fix_age_s: float = key(
        _GEOFENCE.max_fix_age_s,
        Number(0.5),
        "a fix older than this (its age on the vehicle plus the time since the push) gives `unknown`, also at "
        "scrape time as it ages",
    )
    max_accuracy_m: float = key(
        _GEOFENCE.max_accuracy_m,
        Number(0),
        "a fix whose reported horizontal accuracy (`position.accuracy_m`) is worse than this gives `unknown`",
    )


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    listen: ListenAddress = key(
        ListenAddress(DEFAULT_HOST, DEFAULT_PORT),
        Listen(),
        "address for pushes, `/metrics` and health; `[::1]:9100` for IPv6; port 0 picks a free port (logged in "
        "the `listening` line); `--listen` beats it",
        reloads=False,
        default_doc=f"`{DEFAULT_HOST}:{DEFAULT_PORT}`",
    )
    auth_required: bool = key(
        True,
        Flag(),
        "require each vehicle's bearer token; `false` only on a loopback address",
        default_doc="`true` in a file",
    )
    offline_after_s: float = key(
        _FLEET.offline_after_s,
        Number(0.5),
        'heartbeat age beyond which a vehicle is offline: `vehicle_up` 0, `vehicle_status{status="offline"}` 1',
    )
    state_file: str | None = key(
        None,
        OptionalPath(),
        "msgpack image of per-vehicle state and counters, rewritten atomically; see "
        "[operations](operations.md#persistence)",
        reloads=False,
    )
    state_flush_interval_s: float = key(
        2.0, Number(0.05), "how often the state file is rewritten while something changed"
    )
    allow_unknown_vehicles: bool = key(
        False,
        Flag(),
        "accept vehicles that are not on the roster; needs `auth_required: false` (they have no credential)",
    )
    statuses: tuple[str, ...] = key(
        _FLEET.statuses,
        Statuses(),
        "vehicle statuses exported in `vehicle_status`; a reported status outside the list is exported as "
        "`unknown` and logged once; `offline` and `unknown` are always added and may not be listed",
        default_doc=", ".join(_FLEET.statuses),
    )
    limits: Limits = key(Limits(), Section(Limits), "guards against oversized input and runaway clients")
    vehicles: Mapping[str, VehicleEntry] = key(
        {},
        Roster(),
        "the roster: expected vehicles, exported from start-up, each with the SHA-256 of its own token",
    )
    log_level: str = key("info", Choice(LOG_LEVELS), "JSON logs on stderr")
    environment: str = key("production", Text(), "`metadata.environment` in every log line", reloads=False)
    tls: TlsConfig | None = key(
        None,
        Section(TlsConfig),
        "serve HTTPS with this certificate chain and key (TLS 1.2+); both files must load as a pair, else exit 2 "
        "(a reload with a pair that does not load is refused, the running certificate stays); a renewed pair "
        "reloads; recommended whenever `listen` is not loopback (a warning "
        "is logged otherwise)",
        reloads=False,
        default_doc="no TLS",
    )
    read_auth: ReadAuth | None = key(
        None, Section(ReadAuth, _read_auth_rule), "credentials for reading fleet data", default_doc="off"
    )
    trusted_proxies: tuple[IPNetwork, ...] = key(
        (),
        Networks(),
        "peers (a load balancer, a reverse proxy) trusted to name the client in `X-Forwarded-For`: for a request "
        "from one of them the client address used in logs and per-address log rates is the right-most "
        "`X-Forwarded-For` entry that is not itself a trusted proxy (entries further left were written by the "
        "client and are ignored); from any other peer the header is ignored. See "
        "[operations](operations.md#connection-limits-and-a-proxy-in-front)",
        default_doc="`[]`",
    )
    geofences: GeofenceConfig | None = key(
        None,
        Section(GeofenceConfig),
        "evaluate each vehicle's fix against operating areas and keep-out zones",
        default_doc="off",
    )
    shard: ShardConfig | None = key(
        None,
        Section(ShardConfig),
        "one shard of a sharded deployment behind HAProxy (docs/scaling.md)",
        reloads=False,
        default_doc="not sharded: every vehicle is this aggregator's",
    )
    history: HistoryConfig = key(
        HistoryConfig(), Section(HistoryConfig, _history_rule), "backlog batches from vehicles' journals"
    )
    events: EventsConfig | None = key(
        None,
        Section(EventsConfig),
        "write vehicles' error events to a JSON-lines file for Filebeat; off: events are acknowledged and "
        "counted, not written",
        reloads=False,
        default_doc="off",
    )

    @property
    def listen_host(self) -> str:
        return self.listen.host

    @property
    def listen_port(self) -> int:
        return self.listen.port


EMBEDDED_DEFAULT = AggregatorConfig(auth_required=False, allow_unknown_vehicles=True, environment="development")
"""Used without --config: loopback only, any vehicle accepted without credentials."""


# -- reading a file ----------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses anchors and aliases before anything is expanded (a few hundred bytes of nested
    aliases expand to gigabytes) and explicit tags (`!!int x` and the like crash PyYAML's constructors), and
    reports every duplicated mapping key instead of keeping the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._duplicates: list[tuple[int, str]] = []

    @property
    def duplicates(self) -> list[str]:
        """Every key written twice in one mapping, in the order of the file."""
        return [message for _, message in sorted(self._duplicates)]

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(
                problem="anchors and aliases (&name, *name) are not allowed in this config; write the values out",
                problem_mark=event.start_mark,
            )
        if getattr(event, "tag", None) not in (None, "!"):
            raise yaml.MarkedYAMLError(
                problem=f"tags ({_show(event.tag)}) are not allowed in this config; write plain values",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        mapping = super().construct_mapping(node, deep=deep)
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            name = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if name in first_line:
                self._duplicates.append(
                    (
                        line,
                        f"line {line}: key {_show(name)} written twice (first at line {first_line[name]}); YAML "
                        "would keep only the last value",
                    )
                )
            else:
                first_line[name] = line
        return mapping


def load_config(path: str | Path, *, listen: str | None = None) -> AggregatorConfig:
    """Read and validate a YAML config file; `listen` (the CLI flag) beats the file's value."""
    return parse_yaml(read_text(path), source=str(path), listen=listen)


def read_text(path: str | Path) -> str:
    """A config file's text; raise ConfigError when it cannot be read or is not UTF-8."""
    try:
        with open_regular(path) as handle, io.TextIOWrapper(handle, encoding="utf-8") as text:
            return text.read()  # universal newlines, as Path.read_text: a CRLF file reads as LF
    except OSError as exc:  # NotARegularFile too: "cannot read file: not a regular file"
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None


def parse_yaml(text: str, *, source: str = "<config>", listen: str | None = None) -> AggregatorConfig:
    """Validate config text; raise ConfigError (and nothing else) listing every problem."""
    try:
        loader = _StrictLoader(text)  # reads the whole text: refuses control characters at once
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError(source, ["not valid YAML: nested too deeply"]) from None
    except ValueError as exc:  # a scalar that matches a YAML type but is not one (e.g. the date 2024-13-45)
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    try:
        config = parse_config({} if data is None else data, source=source, listen=listen)
    except ConfigError as exc:
        raise ConfigError(source, loader.duplicates + exc.problems) from None
    if loader.duplicates:
        raise ConfigError(source, loader.duplicates)
    return config


def default_config(*, listen: str | None = None) -> AggregatorConfig:
    """The embedded default, with the listen flag applied and the same exposure checks as a file."""
    config = EMBEDDED_DEFAULT
    problems: list[str] = []
    if listen is not None:
        config = _with_listen(config, listen, "--listen", problems)
    problems += cross_key_problems(config)
    if problems:
        raise ConfigError("the embedded default configuration", problems)
    return config


def parse_config(data: Any, *, source: str = "<config>", listen: str | None = None) -> AggregatorConfig:
    """Validate a decoded config mapping; raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["top level must be a mapping of keys to values"])
    problems: list[str] = []
    config: AggregatorConfig = read_section(AggregatorConfig, data, problems)
    if listen is not None:
        config = _with_listen(config, listen, "--listen", problems)
    problems += cross_key_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def cross_key_problems(config: AggregatorConfig) -> list[str]:
    """The rules across keys, checked on every config that is to run (a reload's too, with the running listen
    address): beyond loopback vehicles need credentials; with auth_required every roster vehicle has a token
    and no unknown vehicle is accepted."""
    problems = []
    if not config.auth_required and not is_loopback(config.listen_host):
        problems.append(
            f"listen: {config.listen} is reachable from other machines, but no vehicle credentials are configured "
            "(auth_required is false); listen on 127.0.0.1 or configure vehicles with token_sha256"
        )
    read_auth = config.read_auth
    if read_auth is not None:
        readers = {read_auth.bearer_token_sha256, read_auth.basic_password_sha256} - {None}
        problems += [
            f"vehicles.{vid}.token_sha256: the same hash as a read_auth credential: the vehicle's token would "
            "read the whole fleet (positions included); give each its own secret"
            for vid, entry in config.vehicles.items()
            if entry.token_sha256 in readers
        ]
    if config.auth_required:
        problems += [
            f"vehicles.{vid}.token_sha256: required while auth_required is true "
            "(make one with `telemetry_aggregator token " + vid + "`)"
            for vid, entry in config.vehicles.items()
            if entry.token_sha256 is None
        ]
        if config.allow_unknown_vehicles:
            problems.append(
                "allow_unknown_vehicles: unknown vehicles have no credential, so this needs auth_required: false"
            )
    if config.shard is not None:
        problems += [f"shard.name: {p}" for p in ownership_problems(config.shard.name, config.shard.map_file)]
    return problems


def parse_listen(value: Any) -> tuple[str, int]:
    """Split HOST:PORT (or [IPv6]:PORT); raise ValueError with a readable message."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"must be HOST:PORT, got {_show(value)}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"must be HOST:PORT with a host, got {_show(value)}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535, got {_show(port_text)}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the port on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_listen(config: AggregatorConfig, value: Any, path: str, problems: list[str]) -> AggregatorConfig:
    address = Listen().read(value, path, problems)
    return config if address is INVALID else replace(config, listen=address)


# -- the reference table of docs/configuration.md ----------------------------------------------------


def reference_rows(cls: Any = AggregatorConfig, prefix: str = "") -> Iterator[tuple[str, str, bool, str]]:
    """(key, type and default, reloads, meaning) of every leaf key, sections expanded."""
    for f, spec in keys_of(cls):
        if isinstance(spec.kind, Section):
            yield from reference_rows(spec.kind.cls, f"{prefix}{f.name}.")
            continue
        if spec.default_doc is not None:
            default = spec.default_doc
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            default = "required"
        else:
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            default = f"`{_yaml_scalar(value)}`"
        yield prefix + f.name, f"{spec.kind.doc} ({default})", spec.reloads, spec.doc


def section_docs(cls: Any = AggregatorConfig, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(section key, meaning) of every section, for the notes under the table."""
    for f, spec in keys_of(cls):
        if isinstance(spec.kind, Section):
            toggle = "" if f.default is not None else f"; turning it on or off: {_mark(spec.reloads)}"
            default = f" (default: {spec.default_doc}{toggle})" if spec.default_doc else ""
            yield prefix + f.name, spec.doc + default
            yield from section_docs(spec.kind.cls, f"{prefix}{f.name}.")


def reference_table() -> str:
    """The key table of docs/configuration.md, generated from the declarations above."""
    lines = ["| key | type (default) | on SIGHUP | meaning |", "| --- | --- | --- | --- |"]
    for name, kind, reloads, doc in reference_rows():
        lines.append(f"| `{name}` | {kind} | {_mark(reloads)} | {doc} |")
    lines.append("")
    lines.extend(f"- `{name}`: {doc}" for name, doc in section_docs())
    return "\n".join(lines) + "\n"


def _mark(reloads: bool) -> str:
    return "reloads" if reloads else "restart"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    if isinstance(value, dict):
        return "{}"
    return str(value)


TABLE_BEGIN, TABLE_END = "<!-- config-keys:begin -->\n", "<!-- config-keys:end -->"


def write_reference(doc: Path) -> None:
    """Replace the key table between the markers in `doc` (docs/configuration.md) with `reference_table()`."""
    text = doc.read_text(encoding="utf-8")
    head, rest = text.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    doc.write_text(head + TABLE_BEGIN + reference_table() + TABLE_END + tail, encoding="utf-8")


if __name__ == "__main__":  # python -m tvm_observability.aggregator.config [docs/configuration.md]
    import sys

    if len(sys.argv) > 1:
        write_reference(Path(sys.argv[1]))
    else:
        sys.stdout.write(reference_table())
