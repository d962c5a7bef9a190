"""`telemetry_aggregator`: run the service, check a config, or make a vehicle credential."""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__, codec
from ..auth import generate_token, hash_token
from ..errors import TelemetryError
from ..model import VEHICLE_ID_PATTERN
from . import check_requirements
from .app import RUNTIME, is_configured_token, make_app
from .config import AggregatorConfig, ConfigError, default_config, is_loopback, load_config
from .connections import Acceptor, ConnectionGuard, ConnectionPolicy, descriptor_budget, listening_sockets
from .fast_push import FastPushConnections
from .logs import LogSummary, configure_logging, redaction_filters
from .persistence import StateFile
from .settings import derive, plan_reload
from .shard_map_command import shard_map_command
from .shards import unplaced
from .state_image import CorruptState, StateRefused
from .tls import ServerTls, server_context

try:
    import uvloop as _uvloop
except ImportError:  # optional dependency
    _uvloop = None  # type: ignore[assignment]

_LOGGER = logging.getLogger("tvm_observability.aggregator.service")
SHUTDOWN_TIMEOUT_S = 5.0
EXIT_STATE_REFUSED = 3
"""Exit status when the state file forbids starting (unreadable, newer format, broken and impossible to move
aside): restarting cannot help, so the systemd unit lists it in RestartPreventExitStatus= (docs/operations.md)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    check_requirements()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return _token_command(args[1:])
    if args[:1] == ["state"]:
        return _state_command(args[1:])
    if args[:1] == ["shard-map"]:
        return shard_map_command(args[1:])
    parser = argparse.ArgumentParser(
        prog="telemetry_aggregator",
        description="Receive vehicle telemetry pushes and expose the fleet to Prometheus on /metrics. "
        "Subcommands: `telemetry_aggregator token VEHICLE_ID` makes a vehicle credential; "
        "`telemetry_aggregator state FILE` prints a state file as JSON; "
        "`telemetry_aggregator shard-map` writes the ownership map of a sharded deployment.",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (default: embedded loopback-only default)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on; beats the config file")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    options = parser.parse_args(args)
    try:
        config = (
            load_config(options.config, listen=options.listen)
            if options.config
            else default_config(listen=options.listen)
        )
    except ConfigError as exc:
        print(f"telemetry_aggregator: {exc}", file=sys.stderr)
        return 2
    try:
        tls = ServerTls(config.tls) if config.tls else None
    except (ssl.SSLError, OSError) as exc:
        print(f"telemetry_aggregator: tls: cannot load the certificate and key: {exc}", file=sys.stderr)
        return 2
    if options.check_config:
        print(f"configuration OK: listen {config.listen}, {len(config.vehicles)} roster vehicles")
        return 0
    configure_logging(config.log_level, config.environment)
    try:
        _run(serve(config, tls=tls, reload_from=options.config, listen=options.listen), tls=tls is not None)
    except StateRefused as exc:
        _LOGGER.error("refusing to start: %s", exc, extra={"path": config.state_file})
        return EXIT_STATE_REFUSED
    except OSError as exc:
        _LOGGER.error("cannot listen on %s: %s", config.listen, exc.strerror or exc)
        return 1
    return 0


def _run(main: Coroutine[Any, Any, None], *, tls: bool) -> None:
    """On uvloop when it is installed (optional; less CPU per push, docs/benchmarks.md) and this port speaks plain
    HTTP, else on asyncio's loop: with uvloop (0.23) the guarded TLS handshake (start_tls on an accepted
    connection, aggregator/connections.py) stalls or fails on some connections, so a TLS port runs on asyncio
    (TLS terminated at a balancer in front leaves the shards on uvloop)."""
    if _uvloop is None or tls:
        asyncio.run(main)
    else:
        _uvloop.run(main)


def event_loop_name() -> str:
    """The loop this process runs on, for the `listening` log record."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


GC_THRESHOLDS = (10_000, 20, 100)
"""Collect young objects every 10,000 allocations instead of 700: a push allocates a few hundred short-lived
objects, and with the default a 5,000-vehicle aggregator spent ~13% of its CPU in the collector. (50,000 cut
that further but made single collections long enough to show in the p99 latency.)"""


def _settle_gc() -> None:
    """After start-up (config, roster, restored state): move what exists to the permanent generation, so the
    collector never rescans it, and collect less often (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    config: AggregatorConfig,
    *,
    tls: ServerTls | None = None,
    reload_from: Path | None = None,
    listen: str | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting, finish requests and save state.

    SIGHUP reloads `reload_from` (every key marked as reloading in config.py, the TLS certificate included);
    a bad file is refused with every problem logged, and the running configuration stays.
    """
    app = make_app(config)
    for redaction in redaction_filters():
        redaction.is_token = partial(is_configured_token, app[RUNTIME])
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        keepalive_timeout=config.limits.idle_timeout_s,
    )
    await runner.setup()
    _settle_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config, app, tls, reload_from, listen)
    rt = app[RUNTIME]
    # Plain pushes are answered by the fast path; every other request by aiohttp (aggregator/fast_push.py).
    fast_push = FastPushConnections(rt, runner.server)  # type: ignore[arg-type]  # a factory of request handlers
    guard = ConnectionGuard(
        fast_push,
        lambda: ConnectionPolicy.of(rt.config),
        ssl_context=tls.listening if tls else None,
        descriptor_budget=descriptor_budget(),
        refused=lambda reason: rt.metrics.connections_refused.labels(reason).inc(),
    )
    rt.metrics.connections_open.set_function(lambda: guard.open)
    rt.metrics.connections_pending.set_function(lambda: guard.pending)
    if config.limits.max_connections > guard.descriptor_budget:
        _LOGGER.warning(
            "limits.max_connections is above what the file descriptor limit allows; the lower number applies",
            extra={"max_connections": config.limits.max_connections, "allowed": guard.descriptor_budget},
        )
    loop.set_exception_handler(_quiet_exception_handler)
    acceptor: Acceptor | None = None
    try:
        # Plain TCP: the guard admits each connection first, then starts TLS on it (aggregator/connections.py).
        acceptor = Acceptor(guard, listening_sockets(config.listen_host, config.listen_port))
        acceptor.start()
        _LOGGER.info(
            "listening",
            extra={
                "addresses": [_address(s.getsockname()) for s in acceptor.sockets],
                "scheme": "https" if tls else "http",
                "event_loop": event_loop_name(),
                "auth_required": config.auth_required,
                "read_auth": config.read_auth is not None,
                "roster_vehicles": len(config.vehicles),
                "state_file": config.state_file,
                "pid": os.getpid(),
            },
        )
        if not is_loopback(config.listen_host):
            _warn_exposure(config, tls is not None)
        _warn_unplaced(config)
        await stop.wait()
        _LOGGER.info("shutting down")
    finally:
        if acceptor is not None:
            acceptor.close()  # stop accepting; the requests under way finish in runner.cleanup()
        guard.abort_pending()
        fast_push.close_idle()  # before the state is saved; aiohttp closes its own connections
        await runner.cleanup()
    _LOGGER.info("stopped")


_LOOP_ERRORS = LogSummary(logging.getLogger("asyncio"), "event loop errors")


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's errors (e.g. `socket.accept() out of system resource`, once per retry) at a bounded rate."""
    if _LOOP_ERRORS.admit(str(context.get("message", "")), "loop"):
        loop.default_exception_handler(context)


def _warn_exposure(config: AggregatorConfig, tls: bool) -> None:
    """Listening beyond loopback: say what is exposed (pushes always need vehicle credentials there)."""
    if not tls:
        _LOGGER.warning(
            "listening beyond loopback without TLS: bearer tokens and fleet data cross the network in clear; "
            "configure tls (or terminate TLS in front of this port)",
            extra={"listen": str(config.listen)},
        )
    if config.read_auth is None:
        _LOGGER.warning(
            "listening beyond loopback without read_auth: anyone who reaches the port can read /metrics "
            "(vehicle positions included); configure read_auth or restrict the network",
            extra={"listen": str(config.listen)},
        )


GEOFENCES_PREFIX = "geofences."
"""Problems of the geofences section (the zones file's included) start with it: a refused reload of the zones."""


def _warn_unplaced(config: AggregatorConfig) -> None:
    """Sharded: name the roster vehicles the ownership map does not place (shards.unplaced)."""
    warning = None if config.shard is None else unplaced(config.shard.map_file, config.vehicles)
    if warning is not None:
        _LOGGER.warning(warning, extra={"shard": config.shard.name if config.shard else None})


def reload_config(app: web.Application, tls: ServerTls | None, path: Path | None, listen: str | None) -> None:
    """SIGHUP: validate the config file again and apply it, or keep the running one and log why.

    Nothing changes unless everything loaded: the config validated and, with TLS on, a new context loaded the
    certificate and key (the files are read again even when their paths did not change: a renewed pair)."""
    if path is None:
        _LOGGER.warning("SIGHUP ignored: running on the embedded default configuration, there is no file to reload")
        return
    rt = app[RUNTIME]
    try:
        plan = plan_reload(rt.config, load_config(path, listen=listen))
    except ConfigError as exc:
        if any(problem.startswith(GEOFENCES_PREFIX) for problem in exc.problems):
            rt.metrics.zone_reloads.labels("failure").inc()
            rt.metrics.zones_reload_healthy.set(0)
        for problem in exc.problems:
            _LOGGER.error("config reload refused: %s", problem, extra={"path": str(path)})
        _LOGGER.error("config reload refused; the running configuration stays", extra={"problems": len(exc.problems)})
        return
    context = None
    if tls is not None and plan.config.tls is not None:
        try:
            context = server_context(plan.config.tls)
        except (ssl.SSLError, OSError) as exc:
            _LOGGER.error(
                "config reload refused: tls: cannot load the certificate and key: %s; the running certificate stays",
                exc,
                extra={"path": str(path)},
            )
            _LOGGER.error("config reload refused; the running configuration stays", extra={"problems": 1})
            return
    added, dropped = rt.apply(derive(plan.config))
    if plan.config.geofences is not None:
        rt.metrics.zone_reloads.labels("success").inc()
        rt.metrics.zones_reload_healthy.set(1)
    if tls is not None and context is not None:
        tls.use(context)
    logging.getLogger().setLevel(plan.config.log_level.upper())
    if plan.needs_restart:
        _LOGGER.warning("changed keys take effect only after a restart", extra={"keys": plan.needs_restart})
    _LOGGER.info(
        "configuration reloaded",
        extra={
            "roster_vehicles": len(plan.config.vehicles),
            "added": added,
            "dropped": dropped,
            "tokens_rotated": plan.rotated,
        },
    )
    _warn_unplaced(plan.config)


def _address(address: object) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _token_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="telemetry_aggregator token",
        description="Make a new random bearer token for a vehicle and print its roster line. "
        "The token is shown once; the aggregator config keeps only its sha256.",
    )
    parser.add_argument("vehicle_id")
    parser.add_argument(
        "--output",
        type=Path,
        help="write the token to this file (mode 0600) instead of printing it",
    )
    options = parser.parse_args(args)
    if VEHICLE_ID_PATTERN.fullmatch(options.vehicle_id) is None:
        print(f"telemetry_aggregator token: vehicle id must match {VEHICLE_ID_PATTERN.pattern}", file=sys.stderr)
        return 2
    token = generate_token()
    if options.output:
        fd = os.open(options.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        print(f"# token for {options.vehicle_id} written to {options.output} (mode 0600); copy it to the vehicle")
    else:
        print(f"# token for {options.vehicle_id}, shown once: put it in the vehicle's token_file (mode 0600)")
        print(token)
    print("# roster line for the aggregator config, under `vehicles:`")
    print(f'  {options.vehicle_id}: {{token_sha256: "{hash_token(token)}"}}')
    return 0


def _state_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="telemetry_aggregator state",
        description="Print a state file (msgpack) as JSON, each vehicle's last snapshot decoded. Binary values "
        'a snapshot carried in fields unknown to the schema print as {"$bin": base64}, msgpack extension values '
        'as {"$ext": type, "data": base64}.',
    )
    parser.add_argument("state_file", type=Path)
    options = parser.parse_args(args)
    try:
        image = StateFile(options.state_file).load()
        if image is None:
            print(f"telemetry_aggregator state: {options.state_file} does not exist", file=sys.stderr)
            return 1
        for saved in image["vehicles"].values():
            if saved.get("snapshot") is not None:
                saved["snapshot"] = codec.decode(saved["snapshot"])
    except StateRefused as exc:
        print(f"telemetry_aggregator state: {exc}", file=sys.stderr)
        return 1
    except (CorruptState, KeyError, TypeError, AttributeError, TelemetryError) as exc:
        print(f"telemetry_aggregator state: {options.state_file} is not a state file: {exc}", file=sys.stderr)
        return 1
    json.dump(_jsonable(image), sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def _jsonable(value: Any) -> Any:
    """`value` with the msgpack values JSON has no type for (in snapshot fields the schema does not know) spelled
    as tagged objects: binary {"$bin": base64}, extension {"$ext": type, "data": base64}."""
    ext = codec.as_ext(value)  # before the containers: an ExtType is a tuple
    if ext is not None:
        return {"$ext": ext[0], "data": base64.b64encode(ext[1]).decode("ascii")}
    if isinstance(value, bytes):
        return {"$bin": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
