"""Simulated vehicle dynamics as pure functions and a small state machine; no ROS, no clocks.

The vehicle drives a circle around the origin while on a mission, draining its battery; at
`low_threshold` it goes charging until `full_threshold`, idles a while, and starts again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_M = 6_378_137.0


def local_to_geo(origin_lat: float, origin_lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    """Latitude and longitude of a point east/north of the origin (equirectangular; fine for a few km)."""
    lat = origin_lat + math.degrees(north_m / EARTH_RADIUS_M)
    lon = origin_lon + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(origin_lat))))
    return lat, lon


def circle_pose(distance_m: float, radius_m: float) -> tuple[float, float, float]:
    """(x, y, yaw) after driving `distance_m` counter-clockwise on a circle centred on the origin."""
    angle = distance_m / radius_m
    x, y = radius_m * math.cos(angle), radius_m * math.sin(angle)
    yaw = math.atan2(math.sin(angle + math.pi / 2), math.cos(angle + math.pi / 2))
    return x, y, yaw


def drift_m(elapsed_s: float, speed_m_s: float, limit_m: float) -> float:
    """How far a vehicle that leaves its route has driven away from it: at `speed_m_s` from elapsed 0, at most
    `limit_m` (the leave-the-area fault)."""
    return min(limit_m, max(0.0, elapsed_s * speed_m_s))


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation by yaw about z."""
    return 0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)


@dataclass(frozen=True, slots=True)
class DynamicsSettings:
    speed_m_s: float = 1.2
    radius_m: float = 40.0
    drain_per_s: float = 0.0005
    """Battery fraction per second while driving (0.05 %/s: a visible change in a demo)."""
    idle_drain_per_s: float = 0.00005
    charge_per_s: float = 0.004
    low_threshold: float = 0.2
    full_threshold: float = 0.95
    idle_s: float = 20.0
    hold_battery: bool = False
    """Low-battery fault: the charge stays where it is and the vehicle never goes charging."""


@dataclass(frozen=True, slots=True)
class VehicleState:
    battery: float
    mode: str = "on_mission"
    distance_m: float = 0.0
    mode_time_s: float = 0.0


def step(state: VehicleState, dt: float, s: DynamicsSettings) -> VehicleState:
    """Advance the vehicle by dt seconds."""
    battery, mode, distance = state.battery, state.mode, state.distance_m
    mode_time = state.mode_time_s + dt
    if mode == "on_mission":
        distance += s.speed_m_s * dt
        battery -= 0 if s.hold_battery else s.drain_per_s * dt
        if battery <= s.low_threshold and not s.hold_battery:
            mode, mode_time = "charging", 0.0
    elif mode == "charging":
        battery += s.charge_per_s * dt
        if battery >= s.full_threshold:
            mode, mode_time = "idle", 0.0
    else:
        battery -= 0 if s.hold_battery else s.idle_drain_per_s * dt
        if mode_time >= s.idle_s:
            mode, mode_time = "on_mission", 0.0
    return VehicleState(min(1.0, max(0.0, battery)), mode, distance, mode_time)


def battery_voltage(fraction: float, cells: int = 7) -> float:
    """Rough Li-ion pack voltage: 3.3 V per cell empty to 4.15 V full."""
    return cells * (3.3 + 0.85 * fraction)


def error_phase(elapsed_s: float, period_s: float) -> bool:
    """Whether an injected intermittent error is active: ERROR for the first half of each period.

    period_s <= 0 means a permanent error.
    """
    if period_s <= 0:
        return True
    return (elapsed_s % period_s) < period_s / 2.0
