"""`telemetry_aggregator`: run the service, check a config, or make a vehicle credential."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from .. import __version__, codec
from ..auth import generate_token, hash_token
from ..errors import TelemetryError
from ..model import VEHICLE_ID_PATTERN
from .app import make_app
from .config import AggregatorConfig, ConfigError, default_config, load_config
from .logs import configure_logging
from .persistence import StateFile

_LOGGER = logging.getLogger("tvm_observability.aggregator.service")
SHUTDOWN_TIMEOUT_S = 5.0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return _token_command(args[1:])
    if args[:1] == ["state"]:
        return _state_command(args[1:])
    parser = argparse.ArgumentParser(
        prog="telemetry_aggregator",
        description="Receive vehicle telemetry pushes and expose the fleet to Prometheus on /metrics. "
        "Subcommands: `telemetry_aggregator token VEHICLE_ID` makes a vehicle credential; "
        "`telemetry_aggregator state FILE` prints a state file as JSON.",
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
    if options.check_config:
        print(f"configuration OK: listen {config.listen}, {len(config.vehicles)} roster vehicles")
        return 0
    configure_logging(config.log_level, config.environment)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        _LOGGER.error("cannot listen on %s: %s", config.listen, exc.strerror or exc)
        return 1
    return 0


async def serve(config: AggregatorConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting, finish requests and save state."""
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port)
        await site.start()
        _LOGGER.info(
            "listening",
            extra={
                "addresses": [_address(a) for a in runner.addresses],
                "auth_required": config.auth_required,
                "roster_vehicles": len(config.vehicles),
                "state_file": config.state_file,
                "pid": os.getpid(),
            },
        )
        await stop.wait()
        _LOGGER.info("shutting down")
    finally:
        await runner.cleanup()
    _LOGGER.info("stopped")


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
        description="Print a state file (msgpack) as JSON, each vehicle's last snapshot decoded.",
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
    except (ValueError, KeyError, TypeError, AttributeError, TelemetryError) as exc:
        print(f"telemetry_aggregator state: {options.state_file} is not a state file: {exc}", file=sys.stderr)
        return 1
    json.dump(image, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
