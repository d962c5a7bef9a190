"""`telemetry_aggregator shard-map`: write the ownership map HAProxy and the aggregators of a sharded deployment
read (shards.py, docs/scaling.md), from the roster of an aggregator config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .shards import ShardMapError, assign, moved, parse, render


def shard_map_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="telemetry_aggregator shard-map",
        description="Place every roster vehicle of --config on one of --shards (rendezvous hashing: adding a shard "
        "moves about 1/K of the vehicles) and write the map file that HAProxy's use_backend and each "
        "aggregator's `shard.map_file` read. Install it for HAProxy and every aggregator, then reload them.",
    )
    parser.add_argument("--config", type=Path, required=True, help="an aggregator config: its roster is placed")
    parser.add_argument("--shards", required=True, help="shard names, comma-separated (HAProxy backend names)")
    parser.add_argument("--output", type=Path, help="write the map here (atomically) instead of printing it")
    options = parser.parse_args(args)
    try:
        config = load_config(options.config)
        shard_map = assign(config.vehicles, [name for name in options.shards.split(",") if name])
    except ConfigError as exc:
        print(f"telemetry_aggregator shard-map: {exc}", file=sys.stderr)
        return 2
    except ShardMapError as exc:
        print(f"telemetry_aggregator shard-map: --shards: {exc}", file=sys.stderr)
        return 2
    text = render(shard_map)
    if options.output is None:
        sys.stdout.write(text)
        return 0
    summary = f"{len(shard_map.owner)} vehicles on {len(shard_map.shards)} shards"
    try:
        previous = parse(options.output.read_text(encoding="utf-8"))
        summary += f"; {len(moved(previous, shard_map))} moved from the previous map"
    except (OSError, UnicodeDecodeError, ShardMapError):
        pass
    temporary = options.output.with_name(f".{options.output.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, options.output)
    print(f"wrote {options.output}: {summary}")
    return 0
