"""Simulator dynamics (pure functions, no ROS)."""

from __future__ import annotations

import math

import pytest

from tvm_observability.sim import dynamics as d


def test_local_to_geo_100m_north_and_east():
    lat, lon = d.local_to_geo(52.52, 13.405, 100.0, 100.0)
    assert (lat - 52.52) * 111_320 == pytest.approx(100.0, rel=0.01)
    assert (lon - 13.405) * 111_320 * math.cos(math.radians(52.52)) == pytest.approx(100.0, rel=0.01)


def test_circle_pose_stays_on_the_circle_and_heads_tangentially():
    for dist in (0.0, 10.0, 100.0):
        x, y, yaw = d.circle_pose(dist, 40.0)
        assert math.hypot(x, y) == pytest.approx(40.0)
        assert math.cos(yaw) * x + math.sin(yaw) * y == pytest.approx(0.0, abs=1e-9)


def test_battery_cycle_mission_charge_idle_mission():
    s = d.DynamicsSettings(drain_per_s=0.01, charge_per_s=0.05, idle_s=5.0)
    state = d.VehicleState(battery=0.3)
    modes = []
    for _ in range(200):
        state = d.step(state, 1.0, s)
        modes.append(state.mode)
        assert 0.0 <= state.battery <= 1.0
    first = [m for i, m in enumerate(modes) if i == 0 or modes[i - 1] != m]
    assert first[:4] == ["on_mission", "charging", "idle", "on_mission"]


def test_low_battery_fault_holds_charge_and_never_charges():
    s = d.DynamicsSettings(hold_battery=True)
    state = d.VehicleState(battery=0.08)
    for _ in range(100):
        state = d.step(state, 1.0, s)
    assert (state.battery, state.mode) == (0.08, "on_mission")


def test_error_phase():
    assert d.error_phase(123.0, 0.0)
    assert [d.error_phase(t, 10.0) for t in (0.0, 4.9, 5.0, 9.9, 10.0)] == [True, True, False, False, True]


def test_quaternion_round_trip():
    from tvm_observability.bridge.converters import yaw_from_quaternion

    assert yaw_from_quaternion(*d.yaw_quaternion(2.0)) == pytest.approx(2.0)


def test_drift_starts_at_the_fault_and_stops_at_its_limit():
    assert d.drift_m(-5.0, 1.2, 250.0) == 0.0
    assert d.drift_m(10.0, 1.2, 250.0) == pytest.approx(12.0)
    assert d.drift_m(1000.0, 1.2, 250.0) == 250.0
