"""Runtime settings: what the running service takes from a configuration, derived in one place.

`derive` turns a validated config into the settings of each component (fleet state, ingest guards, rate
limiter, token owners). Each component takes its part in one place of its own, at construction and on
reload (`FleetState.reconfigure`, `RateLimiter.reconfigure`); `make_app` builds them from these settings and
`Runtime.apply` hands the new ones over on a SIGHUP reload. `plan_reload` decides from each key's reload mark
(config.py) which changes a reload applies and which wait for a restart. Pure: no sockets, no event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .config import AggregatorConfig, ConfigError, Section, cross_key_problems, keys_of
from .fleet import FleetSettings
from .geofence import NO_ZONES, GeofenceSettings, Zones
from .ingest import IngestLimits
from .ratelimit import RateSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """A config and everything derived from it; replaced as a whole on reload (no request sees a mix)."""

    config: AggregatorConfig
    fleet: FleetSettings
    ingest: IngestLimits
    rate: RateSettings
    token_owner: Mapping[str, str]
    """sha256 of each roster token -> its vehicle, to tell 'wrong token' (401) from 'another vehicle's' (403)."""
    zones: Zones = NO_ZONES
    """The geofence zones in force (none while the `geofences` section is absent)."""
    geofence: GeofenceSettings | None = None
    """How fixes are judged; None: geofencing is off."""


def derive(config: AggregatorConfig) -> Settings:
    """The settings of every component, from one validated config."""
    limits = config.limits
    fences = config.geofences
    return Settings(
        config=config,
        fleet=FleetSettings(
            statuses=config.statuses,
            offline_after_s=config.offline_after_s,
            max_error_code_series=limits.max_error_codes_per_vehicle,
            max_unknown_vehicles=limits.max_unknown_vehicles if config.allow_unknown_vehicles else 0,
            max_sensor_series=limits.max_sensor_series_per_vehicle,
            owned=None if config.shard is None else config.shard.map_file.owned_by(config.shard.name),
            values_while_offline=config.history.remote_write_url is None,
        ),
        ingest=IngestLimits(
            max_sensors=limits.max_sensors_per_vehicle,
            max_error_codes=limits.max_error_codes_per_push,
            max_events=limits.max_events_per_push,
        ),
        rate=RateSettings(rate_hz=limits.rate_limit_per_vehicle_hz, burst=limits.rate_limit_burst),
        token_owner={entry.token_sha256: vid for vid, entry in config.vehicles.items() if entry.token_sha256},
        zones=NO_ZONES if fences is None else fences.file,
        geofence=None
        if fences is None
        else GeofenceSettings(
            margin_m=fences.margin_m, max_fix_age_s=fences.max_fix_age_s, max_accuracy_m=fences.max_accuracy_m
        ),
    )


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    config: AggregatorConfig
    """The new config with every restart-only key kept at its running value."""
    needs_restart: list[str]
    """Restart-only keys that changed: they take effect after a restart."""
    rotated: list[str]
    """Roster vehicles whose token hash changed."""


def plan_reload(running: AggregatorConfig, new: AggregatorConfig) -> ReloadPlan:
    """What a reload to `new` applies: everything but the restart-only keys, which keep their running value.

    Raises ConfigError when the mix breaks a rule across keys (e.g. auth_required: false in a file that also
    moves `listen` to loopback, while the running listen address is not)."""
    needs_restart: list[str] = []
    config = _keep_restart_only(AggregatorConfig, running, new, "", needs_restart)
    problems = cross_key_problems(config)
    if problems:
        raise ConfigError("the reloaded configuration, with the running values of restart-only keys", problems)
    rotated = sorted(
        vid
        for vid, entry in new.vehicles.items()
        if vid in running.vehicles and running.vehicles[vid].token_sha256 != entry.token_sha256
    )
    return ReloadPlan(config=config, needs_restart=needs_restart, rotated=rotated)


def _keep_restart_only(cls: Any, running: Any, new: Any, prefix: str, needs_restart: list[str]) -> Any:
    kept: dict[str, Any] = {}
    for f, spec in keys_of(cls):
        old_value, new_value = getattr(running, f.name), getattr(new, f.name)
        if old_value == new_value:
            continue
        if isinstance(spec.kind, Section) and old_value is not None and new_value is not None:
            settled = _keep_restart_only(spec.kind.cls, old_value, new_value, f"{prefix}{f.name}.", needs_restart)
            if settled is not new_value:
                kept[f.name] = settled
        elif not spec.reloads:
            needs_restart.append(prefix + f.name)
            kept[f.name] = old_value
    return replace(new, **kept) if kept else new
