"""Aggregator configuration: YAML parsed once into a frozen dataclass; every problem reported together."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..auth import TOKEN_SHA256_PATTERN
from ..model import DEFAULT_VEHICLE_STATUSES, NAME_PATTERN, VEHICLE_ID_PATTERN

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9100


class ConfigError(Exception):
    """The configuration is unusable; `problems` names each bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{listing}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Guards against oversized input, label explosion and runaway clients."""

    max_body_bytes: int = 64 * 1024
    max_sensors_per_vehicle: int = 32
    max_error_codes_per_vehicle: int = 64
    max_unknown_vehicles: int = 1000
    rate_limit_per_vehicle_hz: float = 10.0
    rate_limit_burst: int = 20
    body_timeout_s: float = 10.0
    """A push body must arrive within this time; slow-body (slowloris) clients are cut off with 408."""
    idle_timeout_s: float = 75.0
    """A connection that completes no request within this time is closed (slow or idle headers included)."""
    max_connections: int = 10_000
    """Client connections open at once (kept below the file descriptor limit); more are reset at accept."""
    max_pending_connections: int = 1_000
    """Connections that have not yet sent a first request's headers (TLS handshake included)."""
    max_pending_connections_per_source: int = 100
    """Pending connections per client address; trusted proxies are exempt."""
    tls_handshake_timeout_s: float = 10.0
    """A TLS handshake must complete within this time."""
    header_timeout_s: float = 15.0
    """A new connection must send the complete headers of its first request within this time of the accept."""


@dataclass(frozen=True, slots=True)
class VehicleEntry:
    """A roster vehicle: expected from start-up, with the hash of its bearer token."""

    token_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Serve HTTPS with this certificate chain and private key (PEM files)."""

    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class ReadAuth:
    """Credentials that may read /metrics and the status page (as Prometheus sends them).

    Only hashes are kept: a bearer token's sha256, and for basic auth a username with its password's sha256.
    """

    bearer_token_sha256: str | None = None
    basic_username: str | None = None
    basic_password_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    listen_host: str = DEFAULT_HOST
    listen_port: int = DEFAULT_PORT
    auth_required: bool = True
    offline_after_s: float = 15.0
    state_file: str | None = None
    state_flush_interval_s: float = 2.0
    allow_unknown_vehicles: bool = False
    statuses: tuple[str, ...] = DEFAULT_VEHICLE_STATUSES
    limits: Limits = field(default_factory=Limits)
    vehicles: Mapping[str, VehicleEntry] = field(default_factory=dict)
    log_level: str = "info"
    environment: str = "production"
    tls: TlsConfig | None = None
    read_auth: ReadAuth | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Peers (a load balancer, a reverse proxy) whose X-Forwarded-For names the real client address."""

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


EMBEDDED_DEFAULT = AggregatorConfig(auth_required=False, allow_unknown_vehicles=True, environment="development")
"""Used without --config: loopback only, any vehicle accepted without credentials."""

_LOG_LEVELS = ("debug", "info", "warning", "error")
_TOP_KEYS = {
    "listen",
    "auth_required",
    "offline_after_s",
    "state_file",
    "state_flush_interval_s",
    "allow_unknown_vehicles",
    "statuses",
    "limits",
    "vehicles",
    "log_level",
    "environment",
    "tls",
    "read_auth",
    "trusted_proxies",
}


def load_config(path: str | Path, *, listen: str | None = None) -> AggregatorConfig:
    """Read and validate a YAML config file; `listen` (the CLI flag) beats the file's value."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    return parse_config(data, source=source, listen=listen)


def default_config(*, listen: str | None = None) -> AggregatorConfig:
    """The embedded default, with the listen flag applied and the same exposure checks as a file."""
    config = EMBEDDED_DEFAULT
    problems: list[str] = []
    if listen is not None:
        config = _with_listen(config, listen, "--listen", problems)
    problems += _exposure_problems(config)
    if problems:
        raise ConfigError("the embedded default configuration", problems)
    return config


def parse_config(data: Any, *, source: str = "<config>", listen: str | None = None) -> AggregatorConfig:
    """Validate a decoded config mapping; raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["top level must be a mapping of keys to values"])
    problems = [f"{key}: unknown key" for key in sorted(map(str, data)) if key not in _TOP_KEYS]
    r = _Reader(problems)
    config = AggregatorConfig(
        auth_required=r.boolean(data, "auth_required", True),
        offline_after_s=r.number(data, "offline_after_s", 15.0, low=0.5),
        state_file=r.optional_str(data, "state_file"),
        state_flush_interval_s=r.number(data, "state_flush_interval_s", 2.0, low=0.05),
        allow_unknown_vehicles=r.boolean(data, "allow_unknown_vehicles", False),
        statuses=r.statuses(data),
        limits=r.limits(data.get("limits")),
        vehicles=r.vehicles(data.get("vehicles")),
        log_level=r.choice(data, "log_level", "info", _LOG_LEVELS),
        environment=r.string(data, "environment", "production"),
        tls=r.tls(data.get("tls")),
        read_auth=r.read_auth(data.get("read_auth")),
        trusted_proxies=r.networks(data.get("trusted_proxies")),
    )
    if "listen" in data:
        config = _with_listen(config, data["listen"], "listen", problems)
    if listen is not None:
        config = _with_listen(config, listen, "--listen", problems)
    problems += _exposure_problems(config)
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
    if problems:
        raise ConfigError(source, problems)
    return config


def parse_listen(value: Any) -> tuple[str, int]:
    """Split HOST:PORT (or [IPv6]:PORT); raise ValueError with a readable message."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"must be HOST:PORT with a host, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the port on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_listen(config: AggregatorConfig, value: Any, key: str, problems: list[str]) -> AggregatorConfig:
    try:
        host, port = parse_listen(value)
    except ValueError as exc:
        problems.append(f"{key}: {exc}")
        return config
    return replace(config, listen_host=host, listen_port=port)


def _exposure_problems(config: AggregatorConfig) -> list[str]:
    if config.auth_required or is_loopback(config.listen_host):
        return []
    return [
        f"listen: {config.listen} is reachable from other machines, but no vehicle credentials are configured "
        "(auth_required is false); listen on 127.0.0.1 or configure vehicles with token_sha256"
    ]


class _Reader:
    """Typed reads from the raw mapping; each failure is recorded and a default returned."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def _fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def boolean(self, data: Mapping[str, Any], key: str, default: bool, prefix: str = "") -> bool:
        value = data.get(key, default)
        if type(value) is not bool:
            self._fail(prefix + key, f"must be true or false, got {value!r}")
            return default
        return value

    def number(
        self, data: Mapping[str, Any], key: str, default: float, *, low: float, prefix: str = "", integer: bool = False
    ) -> Any:
        value = data.get(key, default)
        valid = type(value) is int if integer else type(value) in (int, float)
        if not valid or not math.isfinite(value) or value < low:
            kind = "an integer" if integer else "a number"
            self._fail(prefix + key, f"must be {kind} >= {low}, got {value!r}")
            return default
        return value if integer else float(value)

    def string(self, data: Mapping[str, Any], key: str, default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or not value:
            self._fail(key, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def optional_str(self, data: Mapping[str, Any], key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self._fail(key, f"must be a path or null, got {value!r}")
            return None
        return value

    def choice(self, data: Mapping[str, Any], key: str, default: str, options: tuple[str, ...]) -> str:
        value = data.get(key, default)
        if value not in options:
            self._fail(key, f"must be one of {', '.join(options)}, got {value!r}")
            return default
        return str(value)

    def statuses(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        value = data.get("statuses", list(DEFAULT_VEHICLE_STATUSES))
        if not isinstance(value, list) or not value:
            self._fail("statuses", "must be a non-empty list of status names")
            return DEFAULT_VEHICLE_STATUSES
        bad = [s for s in value if not isinstance(s, str) or NAME_PATTERN.fullmatch(s) is None]
        reserved = [s for s in value if s in ("offline", "unknown")]
        if bad:
            self._fail("statuses", f"names must match {NAME_PATTERN.pattern}: {bad!r}")
        if reserved:
            self._fail("statuses", f"'offline' and 'unknown' are always present and may not be listed: {reserved!r}")
        if len(set(value)) != len(value):
            self._fail("statuses", "names must be unique")
        return tuple(value) if not bad else DEFAULT_VEHICLE_STATUSES

    def limits(self, value: Any) -> Limits:
        if value is None:
            return Limits()
        if not isinstance(value, dict):
            self._fail("limits", "must be a mapping")
            return Limits()
        defaults = Limits()
        known = set(Limits.__slots__)
        for key in sorted(map(str, value)):
            if key not in known:
                self._fail(f"limits.{key}", "unknown key")
        return Limits(
            max_body_bytes=self.number(
                value, "max_body_bytes", defaults.max_body_bytes, low=256, prefix="limits.", integer=True
            ),
            max_sensors_per_vehicle=self.number(
                value,
                "max_sensors_per_vehicle",
                defaults.max_sensors_per_vehicle,
                low=1,
                prefix="limits.",
                integer=True,
            ),
            max_error_codes_per_vehicle=self.number(
                value,
                "max_error_codes_per_vehicle",
                defaults.max_error_codes_per_vehicle,
                low=1,
                prefix="limits.",
                integer=True,
            ),
            max_unknown_vehicles=self.number(
                value, "max_unknown_vehicles", defaults.max_unknown_vehicles, low=0, prefix="limits.", integer=True
            ),
            rate_limit_per_vehicle_hz=self.number(
                value, "rate_limit_per_vehicle_hz", defaults.rate_limit_per_vehicle_hz, low=0.1, prefix="limits."
            ),
            rate_limit_burst=self.number(
                value, "rate_limit_burst", defaults.rate_limit_burst, low=1, prefix="limits.", integer=True
            ),
            body_timeout_s=self.number(value, "body_timeout_s", defaults.body_timeout_s, low=0.1, prefix="limits."),
            idle_timeout_s=self.number(value, "idle_timeout_s", defaults.idle_timeout_s, low=0.5, prefix="limits."),
            max_connections=self.number(
                value, "max_connections", defaults.max_connections, low=1, prefix="limits.", integer=True
            ),
            max_pending_connections=self.number(
                value,
                "max_pending_connections",
                defaults.max_pending_connections,
                low=1,
                prefix="limits.",
                integer=True,
            ),
            max_pending_connections_per_source=self.number(
                value,
                "max_pending_connections_per_source",
                defaults.max_pending_connections_per_source,
                low=1,
                prefix="limits.",
                integer=True,
            ),
            tls_handshake_timeout_s=self.number(
                value, "tls_handshake_timeout_s", defaults.tls_handshake_timeout_s, low=0.1, prefix="limits."
            ),
            header_timeout_s=self.number(
                value, "header_timeout_s", defaults.header_timeout_s, low=0.1, prefix="limits."
            ),
        )

    def networks(self, value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self._fail("trusted_proxies", "must be a list of addresses or CIDR networks, e.g. [10.0.0.5, 10.1.0.0/16]")
            return ()
        networks = []
        for item in value:
            try:
                if not isinstance(item, str):
                    raise ValueError("not a string")
                networks.append(ipaddress.ip_network(item, strict=True))
            except ValueError as exc:
                self._fail("trusted_proxies", f"{item!r} is not an address or CIDR network: {exc}")
        return tuple(networks)

    def _section(self, value: Any, name: str, keys: tuple[str, ...]) -> Mapping[str, Any] | None:
        if not isinstance(value, dict):
            self._fail(name, f"must be a mapping with keys {', '.join(keys)}")
            return None
        for key in sorted(map(str, value)):
            if key not in keys:
                self._fail(f"{name}.{key}", "unknown key")
        return value

    def _readable_file(self, section: Mapping[str, Any], name: str, key: str) -> str:
        path = section.get(key)
        if not isinstance(path, str) or not path:
            self._fail(f"{name}.{key}", f"must be the path of a PEM file, got {path!r}")
            return ""
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            self._fail(f"{name}.{key}", f"cannot read {path}: {exc.strerror or exc}")
        return path

    def tls(self, value: Any) -> TlsConfig | None:
        if value is None:
            return None
        section = self._section(value, "tls", ("cert_file", "key_file"))
        if section is None:
            return None
        return TlsConfig(
            cert_file=self._readable_file(section, "tls", "cert_file"),
            key_file=self._readable_file(section, "tls", "key_file"),
        )

    def _sha256(self, section: Mapping[str, Any], path: str, key: str) -> str | None:
        digest = section.get(key)
        if digest is not None and (not isinstance(digest, str) or TOKEN_SHA256_PATTERN.fullmatch(digest) is None):
            self._fail(f"{path}.{key}", "must be 64 lowercase hex characters (a sha256)")
            return None
        return digest

    def read_auth(self, value: Any) -> ReadAuth | None:
        if value is None:
            return None
        keys = ("bearer_token_sha256", "basic_username", "basic_password_sha256")
        section = self._section(value, "read_auth", keys)
        if section is None:
            return None
        username = section.get("basic_username")
        if username is not None and (not isinstance(username, str) or not username or ":" in username):
            self._fail("read_auth.basic_username", "must be a non-empty string without ':'")
            username = None
        auth = ReadAuth(
            bearer_token_sha256=self._sha256(section, "read_auth", "bearer_token_sha256"),
            basic_username=username,
            basic_password_sha256=self._sha256(section, "read_auth", "basic_password_sha256"),
        )
        if ("basic_username" in section) != ("basic_password_sha256" in section):
            self._fail("read_auth", "basic_username and basic_password_sha256 go together")
        if "bearer_token_sha256" not in section and "basic_username" not in section:
            self._fail("read_auth", "needs bearer_token_sha256, or basic_username with basic_password_sha256")
        return auth

    def vehicles(self, value: Any) -> Mapping[str, VehicleEntry]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._fail("vehicles", "must be a mapping of vehicle id to {token_sha256: ...}")
            return {}
        roster: dict[str, VehicleEntry] = {}
        for vid, raw_entry in value.items():
            path = f"vehicles.{vid}"
            if not isinstance(vid, str) or VEHICLE_ID_PATTERN.fullmatch(vid) is None:
                self._fail(path, f"vehicle id must match {VEHICLE_ID_PATTERN.pattern}")
                continue
            entry = {} if raw_entry is None else raw_entry
            if not isinstance(entry, dict):
                self._fail(path, "must be a mapping such as {token_sha256: <hex>}")
                continue
            for key in sorted(map(str, entry)):
                if key != "token_sha256":
                    self._fail(f"{path}.{key}", "unknown key")
            digest = entry.get("token_sha256")
            if digest is not None and (not isinstance(digest, str) or TOKEN_SHA256_PATTERN.fullmatch(digest) is None):
                self._fail(f"{path}.token_sha256", "must be 64 lowercase hex characters (sha256 of the token)")
                digest = None
            roster[vid] = VehicleEntry(token_sha256=digest)
        return roster
