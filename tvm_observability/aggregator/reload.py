"""Apply a reloaded configuration (SIGHUP) to a running service: roster, token hashes, limits, statuses.

The new config has already passed `load_config`; a bad one never gets here (the CLI keeps the old one).
The listen address and the state file are bound at start-up: changing them needs a restart, and is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .config import AggregatorConfig
from .fleet import FleetSettings
from .ingest import IngestLimits

if TYPE_CHECKING:
    from .app import Runtime


@dataclass(frozen=True, slots=True)
class ReloadResult:
    added: list[str]
    dropped: list[str]
    rotated: list[str]
    """Roster vehicles whose token hash changed."""
    needs_restart: list[str]
    """Config keys that changed but only take effect after a restart."""


_RESTART_ONLY = {
    "listen": ("listen_host", "listen_port"),
    "state_file": ("state_file",),
    "environment": ("environment",),
}


def ingest_limits(config: AggregatorConfig) -> IngestLimits:
    """The per-snapshot guards a config asks for."""
    return IngestLimits(
        max_sensors=config.limits.max_sensors_per_vehicle, max_error_codes=config.limits.max_error_codes_per_vehicle
    )


def fleet_settings(config: AggregatorConfig) -> FleetSettings:
    """What the fleet state takes from a config."""
    return FleetSettings(
        statuses=config.statuses,
        offline_after_s=config.offline_after_s,
        max_error_code_series=config.limits.max_error_codes_per_vehicle,
        max_unknown_vehicles=config.limits.max_unknown_vehicles if config.allow_unknown_vehicles else 0,
    )


def token_owners(config: AggregatorConfig) -> dict[str, str]:
    """sha256 of each roster token -> its vehicle (tells a wrong token from another vehicle's)."""
    return {entry.token_sha256: vid for vid, entry in config.vehicles.items() if entry.token_sha256}


def apply_config(rt: Runtime, new: AggregatorConfig) -> ReloadResult:
    """Swap `new` into the running service in one step of the event loop (no request sees a mix)."""
    old = rt.config
    needs_restart = [
        key for key, fields in _RESTART_ONLY.items() if any(getattr(old, f) != getattr(new, f) for f in fields)
    ]
    new = replace(
        new,
        listen_host=old.listen_host,
        listen_port=old.listen_port,
        state_file=old.state_file,
        environment=old.environment,
    )
    rotated = sorted(
        vid
        for vid, entry in new.vehicles.items()
        if vid in old.vehicles and old.vehicles[vid].token_sha256 != entry.token_sha256
    )
    added, dropped = rt.fleet.reconfigure(new.vehicles, fleet_settings(new))
    rt.limiter.rate_hz = new.limits.rate_limit_per_vehicle_hz
    rt.limiter.burst = float(new.limits.rate_limit_burst)
    rt.ingest_limits = ingest_limits(new)
    rt.token_owner = token_owners(new)
    rt.config = new
    return ReloadResult(added=added, dropped=dropped, rotated=rotated, needs_restart=needs_restart)
