"""The ownership map of a sharded deployment (decision record 0005). Pure: no sockets, no clock.

One map, generated from the roster by `telemetry_aggregator shard-map`, says which shard owns each roster
vehicle. HAProxy reads it (`use_backend` on the `X-Vehicle-Id` header, decision 0001) and every aggregator of
a shard reads it too (config section `shard:`): an aggregator reports a vehicle it does not own only while
that vehicle is pushing to it, so no aggregator reports another shard's vehicle as offline, and the owner
reports a roster vehicle that was never heard from.

Vehicles are placed by rendezvous (highest random weight) hashing: each vehicle goes to the shard with the
highest hash of (shard, vehicle), so adding a K+1-th shard moves only the vehicles that the new shard wins,
about 1/(K+1) of them, and removing a shard moves only its own. The file is an HAProxy map file: one
`vehicle shard` pair a line, `#` comments; its header line lists the shards, so a shard without vehicles is
still a shard of the map.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..model import VEHICLE_ID_PATTERN

SHARDS_HEADER = "# shards:"
"""The map file's line that lists every shard, in order."""
MAP_TITLE = "# vehicle id -> shard, generated from the roster by `telemetry_aggregator shard-map`; do not edit"
SHARD_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A shard name is also the name of its HAProxy backend (letters, digits, `-`, `_`, `.`)."""
_SHOWN = 10
"""Vehicle ids named in one message at most."""


class ShardMapError(ValueError):
    """The map text or the shard list is unusable; `problems` names each defect."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class ShardMap:
    """Which shard owns each roster vehicle, and the list of shards."""

    shards: tuple[str, ...]
    owner: Mapping[str, str]

    def owned_by(self, shard: str) -> frozenset[str]:
        return frozenset(vid for vid, name in self.owner.items() if name == shard)


def weight(shard: str, vehicle_id: str) -> int:
    """The rendezvous weight of a vehicle on a shard: the vehicle goes to the shard where it is highest."""
    digest = hashlib.sha256(f"{shard}\0{vehicle_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def assign(vehicles: Iterable[str], shards: Iterable[str]) -> ShardMap:
    """Place every vehicle on its shard; raises ShardMapError for no shards, a repeated or a badly named one."""
    names = tuple(shards)
    problems = check_shard_names(names)
    if problems:
        raise ShardMapError(problems)
    owner = {vid: max(names, key=lambda shard: (weight(shard, vid), shard)) for vid in sorted(vehicles)}
    return ShardMap(shards=names, owner=owner)


def check_shard_names(names: tuple[str, ...]) -> list[str]:
    problems = [] if names else ["at least one shard is needed"]
    problems += [
        f"shard name {n!r} must match {SHARD_NAME_PATTERN.pattern}"
        for n in names
        if not SHARD_NAME_PATTERN.fullmatch(n)
    ]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"shard names must be unique, repeated: {', '.join(repeated)}")
    return problems


def render(shard_map: ShardMap) -> str:
    """The HAProxy map file of `shard_map`."""
    lines = [MAP_TITLE, f"{SHARDS_HEADER} {' '.join(shard_map.shards)}"]
    lines += [f"{vid} {shard}" for vid, shard in sorted(shard_map.owner.items())]
    return "\n".join(lines) + "\n"


def parse(text: str) -> ShardMap:
    """Read a map file written by `render`; raises ShardMapError naming every bad line."""
    problems: list[str] = []
    shards: tuple[str, ...] | None = None
    owner: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if line.startswith(SHARDS_HEADER):
            shards = tuple(line[len(SHARDS_HEADER) :].split())
            problems += [f"line {number}: {p}" for p in check_shard_names(shards)]
            continue
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2 or VEHICLE_ID_PATTERN.fullmatch(words[0]) is None:
            problems.append(f"line {number}: must be `<vehicle id> <shard>`, got {line[:80]!r}")
        elif words[0] in owner:
            problems.append(f"line {number}: vehicle {words[0]} is listed twice")
        else:
            owner[words[0]] = words[1]
    if shards is None:
        problems.append(f"no `{SHARDS_HEADER} ...` line: not a map written by `telemetry_aggregator shard-map`")
        shards = ()
    strays = sorted({shard for shard in owner.values() if shard not in shards})
    if strays and shards:
        problems.append(f"vehicles placed on shards the `{SHARDS_HEADER}` line does not list: {', '.join(strays)}")
    if problems:
        raise ShardMapError(problems)
    return ShardMap(shards=shards, owner=owner)


def ownership_problems(shard: str, shard_map: ShardMap) -> list[str]:
    """Why an aggregator of `shard` cannot run with this map: its shard is not one of the map's."""
    if shard in shard_map.shards:
        return []
    return [f"shard {shard!r} is not one of the map's shards ({', '.join(shard_map.shards)})"]


def unplaced(shard_map: ShardMap, roster: Iterable[str]) -> str | None:
    """A warning naming the roster vehicles the map does not place (a roster grown since the map was written):
    HAProxy sends them by its consistent-hash fallback and no shard reports them offline. None when all are."""
    missing = sorted(vid for vid in roster if vid not in shard_map.owner)
    if not missing:
        return None
    more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
    return (
        f"roster vehicles missing from the shard map: {', '.join(missing[:_SHOWN])}{more}; no shard reports them "
        "offline until the map is regenerated with `telemetry_aggregator shard-map` and reloaded"
    )


def moved(before: ShardMap, after: ShardMap) -> list[str]:
    """Vehicles of both maps whose shard differs."""
    return sorted(vid for vid, shard in after.owner.items() if before.owner.get(vid, shard) != shard)
