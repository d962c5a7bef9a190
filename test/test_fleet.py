"""Fleet state: liveness, idempotency, the cumulative per-boot error counting model and the label budgets. No I/O."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from support import FakeClock, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import state_image
from tvm_observability.aggregator.collector import FleetCollector
from tvm_observability.aggregator.fleet import (
    MAX_CODES_PER_BOOT,
    RETIRED_BOOT_IDS,
    TRACKED_BOOTS,
    FleetSettings,
    FleetState,
    Outcome,
)
from tvm_observability.aggregator.ingest import IngestLimits, parse_snapshot
from tvm_observability.errors import LimitExceeded, StaleBoot
from tvm_observability.model import VehicleSnapshot


def snap(
    vehicle_id: str = "V1", boot_id: str = "a", seq: int = 1, errors: dict[str, int] | None = None, **fields: object
) -> VehicleSnapshot:
    return parse_snapshot(wire_snapshot(vehicle_id, boot_id=boot_id, seq=seq, errors=errors or {}, **fields))


def make_fleet(clock: FakeClock, roster: tuple[str, ...] = ("V1", "V2"), **kwargs: int) -> FleetState:
    return FleetState(roster, FleetSettings(offline_after_s=15, **kwargs), clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_roster_vehicles_exist_before_first_contact(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    v2 = fleet.get("V2")
    assert v2 is not None and v2.on_roster and v2.snapshot is None
    assert v2.heartbeat_age(clock.monotonic()) == float("inf")
    assert fleet.status_of(v2, clock.monotonic()) == "offline"
    assert fleet.online_count(clock.monotonic()) == 0 and len(fleet) == 2


def test_heartbeat_age_and_offline_after_threshold(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    assert fleet.apply(snap()) is Outcome.ACCEPTED
    v1 = fleet.get("V1")
    assert v1 is not None
    clock.advance(15.0)
    assert v1.heartbeat_age(clock.monotonic()) == pytest.approx(15.0)
    assert fleet.status_of(v1, clock.monotonic()) == "idle"
    clock.advance(0.01)
    assert fleet.status_of(v1, clock.monotonic()) == "offline"
    assert fleet.online_count(clock.monotonic()) == 0
    fleet.apply(snap(seq=2, status="on_mission"))
    assert fleet.status_of(v1, clock.monotonic()) == "on_mission"


def test_unconfigured_or_missing_status_is_unknown(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    fleet.apply(snap(status="teleporting"))
    v1 = fleet.get("V1")
    assert v1 is not None
    assert fleet.status_of(v1, clock.monotonic()) == "unknown"
    fleet.apply(snap(seq=2, status=None))
    assert fleet.status_of(v1, clock.monotonic()) == "unknown"
    assert not fleet.is_known_status("teleporting") and fleet.is_known_status(None)


def test_retries_and_reordered_pushes_are_ignored(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    assert fleet.apply(snap(seq=5, errors={"E1": 2})) is Outcome.ACCEPTED
    clock.advance(1)
    heartbeat = fleet.get("V1").heartbeat_monotonic  # type: ignore[union-attr]
    assert fleet.apply(snap(seq=5, errors={"E1": 2})) is Outcome.DUPLICATE
    assert fleet.apply(snap(seq=4, errors={"E1": 1}, status="charging")) is Outcome.DUPLICATE
    v1 = fleet.get("V1")
    assert v1 is not None
    assert v1.errors_total == {"E1": 2}
    assert v1.snapshot is not None and v1.snapshot.status == "idle"
    assert v1.heartbeat_monotonic == heartbeat


def test_cumulative_counts_survive_lost_pushes(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    fleet.apply(snap(seq=1, errors={"E1": 1}))
    # pushes 2..9 lost on the way; the next one still carries every event
    fleet.apply(snap(seq=10, errors={"E1": 4, "E2": 1}))
    assert fleet.get("V1").errors_total == {"E1": 4, "E2": 1}  # type: ignore[union-attr]


def test_new_boot_adds_to_previous_boots(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    fleet.apply(snap(boot_id="a", seq=3, errors={"E1": 5}))
    assert fleet.apply(snap(boot_id="b", seq=1, errors={"E1": 1, "E3": 2})) is Outcome.ACCEPTED
    v1 = fleet.get("V1")
    assert v1 is not None
    assert v1.errors_total == {"E1": 6, "E3": 2}
    assert v1.restarts == 1 and v1.boot_id == "b"


def test_late_push_of_previous_boot_counts_but_does_not_rewind_state(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    fleet.apply(snap(boot_id="a", seq=3, errors={"E1": 5}))
    fleet.apply(snap(boot_id="b", seq=1, status="charging"))
    # a retry from boot a, sent before the reboot, arrives late with two more events
    assert fleet.apply(snap(boot_id="a", seq=4, errors={"E1": 7}, status="idle")) is Outcome.PREVIOUS_BOOT
    v1 = fleet.get("V1")
    assert v1 is not None
    assert v1.errors_total == {"E1": 7}
    assert v1.snapshot is not None and v1.snapshot.boot_id == "b" and v1.snapshot.status == "charging"


def test_counts_never_decrease_within_a_boot(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    fleet.apply(snap(seq=1, errors={"E1": 5}))
    fleet.apply(snap(seq=2, errors={"E1": 2}))
    assert fleet.get("V1").errors_total == {"E1": 5}  # type: ignore[union-attr]


def test_old_boots_are_retired_without_losing_counts(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    for boot in range(TRACKED_BOOTS + 3):
        fleet.apply(snap(boot_id=f"boot{boot}", seq=1, errors={"E1": 2}))
    v1 = fleet.get("V1")
    assert v1 is not None
    assert len(v1.boots) == TRACKED_BOOTS
    assert v1.errors_total == {"E1": 2 * (TRACKED_BOOTS + 3)}
    assert v1.restarts == TRACKED_BOOTS + 2


def test_unknown_vehicle_cap_leaves_state_unchanged(clock: FakeClock) -> None:
    fleet = make_fleet(clock, max_unknown_vehicles=1)
    fleet.apply(snap("X1"))
    with pytest.raises(LimitExceeded) as info:
        fleet.apply(snap("X2"))
    assert info.value.reason == "limit_vehicles"
    assert fleet.get("X2") is None and len(fleet) == 3
    assert fleet.get("X1").on_roster is False  # type: ignore[union-attr]


def test_codes_beyond_the_series_budget_count_under_other(clock: FakeClock) -> None:
    fleet = make_fleet(clock, max_error_code_series=3)  # two codes of its own, plus "other"
    assert fleet.apply(snap(boot_id="a", errors={"E1": 1, "E2": 1, "E3": 2})) is Outcome.ACCEPTED
    v1 = fleet.get("V1")
    assert v1 is not None
    assert v1.errors_total == {"E1": 1, "E2": 1, "other": 2}
    # a new boot with yet another code: accepted, nothing lost, no new series
    assert fleet.apply(snap(boot_id="b", errors={"E4": 5, "E1": 1})) is Outcome.ACCEPTED
    assert v1.errors_total == {"E1": 2, "E2": 1, "other": 7}
    # the vehicle's own "other" adds to the same series
    fleet.apply(snap(boot_id="b", seq=2, errors={"E4": 5, "E1": 1, "other": 1}))
    assert v1.errors_total == {"E1": 2, "E2": 1, "other": 8}
    # retiring boots keeps the same mapping
    for boot in range(TRACKED_BOOTS):
        fleet.apply(snap(boot_id=f"later{boot}", errors={}))
    assert v1.errors_total == {"E1": 2, "E2": 1, "other": 8}
    restored = make_fleet(FakeClock(), max_error_code_series=3)
    state_image.restore(restored, codec.unpack_state(codec.pack_state(state_image.to_image(fleet))), keep_unknown=False)
    assert restored.get("V1").errors_total == {"E1": 2, "E2": 1, "other": 8}  # type: ignore[union-attr]
    restored.apply(snap(boot_id="later3", seq=2, errors={"E2": 1, "E9": 1}))
    assert restored.get("V1").errors_total == {"E1": 2, "E2": 2, "other": 9}  # type: ignore[union-attr]


def test_codes_remembered_per_boot_are_bounded(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    for seq in range(1, MAX_CODES_PER_BOOT // 50 + 3):
        fleet.apply(snap(seq=seq, errors={f"C{seq}-{i}": 1 for i in range(50)}))
    record = fleet.get("V1").boots["a"]  # type: ignore[union-attr]
    assert len(record.errors) == MAX_CODES_PER_BOOT


def test_persistence_image_round_trips_through_the_state_codec(clock: FakeClock) -> None:
    fleet = make_fleet(clock, max_unknown_vehicles=5)
    fleet.apply(snap("V1", boot_id="a", seq=9, errors={"E1": 3}))
    fleet.apply(snap("V1", boot_id="b", seq=2, errors={"E1": 1}))
    fleet.apply(snap("X7", seq=1))
    clock.advance(40)
    image = codec.unpack_state(codec.pack_state(state_image.to_image(fleet)))

    later = FakeClock(wall=clock.time() + 5)  # restarted 5 s later; monotonic clock restarted too
    restored = make_fleet(later, max_unknown_vehicles=5)
    assert state_image.restore(restored, image, keep_unknown=True) == []
    v1 = restored.get("V1")
    assert v1 is not None and v1.on_roster
    assert v1.errors_total == {"E1": 4} and v1.restarts == 1 and v1.boot_id == "b"
    assert v1.heartbeat_age(later.monotonic()) == pytest.approx(45.0)
    assert restored.status_of(v1, later.monotonic()) == "offline"
    # the same push again is still a duplicate after the restart, so nothing is double-counted
    assert restored.apply(snap("V1", boot_id="b", seq=2, errors={"E1": 1})) is Outcome.DUPLICATE
    assert restored.get("X7") is not None and not restored.get("X7").on_roster  # type: ignore[union-attr]


def test_restore_skips_unknown_vehicles_when_they_are_refused(clock: FakeClock) -> None:
    fleet = make_fleet(clock, max_unknown_vehicles=5)
    fleet.apply(snap("X7"))
    restored = make_fleet(FakeClock())
    assert state_image.restore(restored, state_image.to_image(fleet), keep_unknown=False) == ["X7"]
    assert restored.get("X7") is None


def test_broken_image_is_refused_whole(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    fleet.apply(snap("V1", errors={"E1": 3}))
    fleet.apply(snap("V2", errors={"E1": 1}))
    image = codec.unpack_state(codec.pack_state(state_image.to_image(fleet)))
    image["vehicles"]["V2"]["boots"][0]["errors"]["E1"] = -4
    target = make_fleet(FakeClock())
    with pytest.raises(ValueError):
        state_image.restore(target, image, keep_unknown=False)
    assert target.get("V1").errors_total == {}  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        state_image.restore(
            target, {"format": state_image.STATE_FORMAT, "vehicles": {"V1": {"boots": 7}}}, keep_unknown=False
        )


def test_push_from_a_retired_boot_is_refused_and_changes_nothing(clock: FakeClock) -> None:
    """Boots are ordered by first arrival: one older than the tracked boots must not count again nor rewind."""
    fleet = make_fleet(clock)
    fleet.apply(snap(boot_id="boot0", seq=5, errors={"E1": 3}, battery={"percentage": 11.0, "age_s": 0.1}))
    for boot in range(1, TRACKED_BOOTS + 1):
        fleet.apply(snap(boot_id=f"boot{boot}", seq=1, errors={"E1": 1}, battery={"percentage": 90.0, "age_s": 0.1}))
    v1 = fleet.get("V1")
    assert v1 is not None and "boot0" not in v1.boots and v1.errors_total == {"E1": 3 + TRACKED_BOOTS}
    before = (dict(v1.errors_total), v1.restarts, v1.snapshot, v1.heartbeat_monotonic, v1.version)
    fleet.dirty = False
    clock.advance(1)
    late = snap(boot_id="boot0", seq=6, errors={"E1": 4}, battery={"percentage": 11.0, "age_s": 0.1})
    with pytest.raises(StaleBoot) as info:
        fleet.apply(late)
    assert (info.value.status, info.value.reason) == (409, "stale_boot")
    assert (dict(v1.errors_total), v1.restarts, v1.snapshot, v1.heartbeat_monotonic, v1.version) == before
    assert not fleet.dirty
    # still refused after a restart of the aggregator: the retired ids are part of the state image
    restored = make_fleet(FakeClock())
    state_image.restore(restored, codec.unpack_state(codec.pack_state(state_image.to_image(fleet))), keep_unknown=False)
    with pytest.raises(StaleBoot):
        restored.apply(late)
    assert restored.get("V1").errors_total == {"E1": 3 + TRACKED_BOOTS}  # type: ignore[union-attr]
    # a tracked boot that is not the current one keeps merging its counts without touching the live values
    assert restored.apply(snap(boot_id="boot1", seq=2, errors={"E1": 2})) is Outcome.PREVIOUS_BOOT
    assert restored.get("V1").errors_total == {"E1": 4 + TRACKED_BOOTS}  # type: ignore[union-attr]


def test_retired_boot_ids_are_bounded(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    for boot in range(TRACKED_BOOTS + RETIRED_BOOT_IDS + 5):
        fleet.apply(snap(boot_id=f"boot{boot}", seq=1))
    v1 = fleet.get("V1")
    assert v1 is not None and len(v1.retired_boots) == RETIRED_BOOT_IDS
    assert next(iter(v1.retired_boots)) == "boot5"  # the oldest are forgotten first


def snap_with_codes(seq: int, codes: dict[str, int]) -> VehicleSnapshot:
    """A push with more codes than one snapshot may carry over the wire, to fill a boot's code memory quickly."""
    return parse_snapshot(wire_snapshot("V1", boot_id="a", seq=seq, errors=codes), IngestLimits(max_error_codes=2000))


def test_codes_past_the_per_boot_memory_count_under_other(clock: FakeClock) -> None:
    fleet = make_fleet(clock)
    first = {f"C{i:04d}": 1 for i in range(1000)}
    fleet.apply(snap_with_codes(1, first))
    later = {**first, **{f"D{i:03d}": 2 for i in range(100)}}  # 24 more fit in the memory, 76 do not
    fleet.apply(snap_with_codes(2, later))
    v1 = fleet.get("V1")
    assert v1 is not None and len(v1.boots["a"].errors) == MAX_CODES_PER_BOOT
    assert sum(v1.errors_total.values()) == 1000 + 200
    latest = {**later, **{f"D{i:03d}": 3 for i in range(100)}}
    fleet.apply(snap_with_codes(3, latest))
    assert sum(v1.errors_total.values()) == 1000 + 300
    assert fleet.apply(snap_with_codes(3, latest)) is Outcome.DUPLICATE
    fleet.apply(snap_with_codes(4, latest))  # the same counts again: nothing counted twice
    assert sum(v1.errors_total.values()) == 1000 + 300
    assert v1.errors_total["other"] == 1000 + 300 - sum(n for c, n in v1.errors_total.items() if c != "other")
    # the overflow survives a restart and the retirement of its boot (the last push a small one: the state file
    # keeps snapshots as the wire carries them, at most 1,024 codes)
    fleet.apply(snap(boot_id="a", seq=5, errors={"C0000": 1}))
    restored = make_fleet(FakeClock())
    state_image.restore(restored, codec.unpack_state(codec.pack_state(state_image.to_image(fleet))), keep_unknown=False)
    for boot in range(TRACKED_BOOTS):
        restored.apply(snap(boot_id=f"later{boot}"))
    assert sum(restored.get("V1").errors_total.values()) == 1000 + 300  # type: ignore[union-attr]


def sensors(**statuses: str) -> dict[str, dict[str, object]]:
    return {name: {"status": status, "rate_hz": 1.0, "message": name} for name, status in statuses.items()}


def test_sensor_names_past_the_budget_fold_into_other(clock: FakeClock) -> None:
    fleet = make_fleet(clock, max_sensor_series=3)
    fleet.apply(snap(seq=1, sensors=sensors(lidar="ok", imu="ok")))
    v1 = fleet.get("V1")
    assert v1 is not None and set(v1.sensors) == {"lidar", "imu"} and v1.sensors_folded == 0
    fleet.apply(snap(seq=2, sensors=sensors(lidar="ok", imu="ok", gps="ok", cam1="warn", cam2="error")))
    assert {n: r.status for n, r in v1.sensors.items()} == {"lidar": "ok", "imu": "ok", "gps": "ok", "other": "error"}
    assert v1.sensors["other"].message == "cam2" and v1.sensors_folded == 2
    # renaming on every push: still three names of its own and "other", every folded report counted
    for seq in range(3, 103):
        fleet.apply(snap(seq=seq, sensors=sensors(lidar="ok", **{f"renamed{seq}": "stale"})))
    assert set(v1.sensor_names) == {"lidar", "imu", "gps"} and v1.sensors_folded == 2 + 100
    assert {n: r.status for n, r in v1.sensors.items()} == {"lidar": "ok", "other": "stale"}
    # the vehicle's own "other" shares the series and is not counted as folded
    fleet.apply(snap(seq=103, sensors=sensors(other="warn", imu="ok")))
    assert {n: r.status for n, r in v1.sensors.items()} == {"imu": "ok", "other": "warn"} and v1.sensors_folded == 102
    # the budget and the count survive a restart
    restored = make_fleet(FakeClock(), max_sensor_series=3)
    state_image.restore(restored, codec.unpack_state(codec.pack_state(state_image.to_image(fleet))), keep_unknown=False)
    again = restored.get("V1")
    assert again is not None and list(again.sensor_names) == ["lidar", "imu", "gps"] and again.sensors_folded == 102
    restored.apply(snap(seq=104, sensors=sensors(newname="ok", gps="ok")))
    assert set(again.sensors) == {"gps", "other"} and again.sensors_folded == 103


def test_sensor_label_values_stay_bounded_in_the_exposition(clock: FakeClock) -> None:
    fleet = make_fleet(clock, max_sensor_series=2)
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))
    seen: set[str] = set()
    for seq in range(1, 51):
        fleet.apply(snap(seq=seq, sensors=sensors(**{f"s{seq}": "ok", f"t{seq}": "warn", "lidar": "ok"})))
        for family in registry.collect():
            seen.update(s.labels["sensor"] for s in family.samples if "sensor" in s.labels)
    assert seen == {"s1", "t1", "other"}
    folded = registry.get_sample_value("vehicle_sensor_names_folded_total", {"vehicle_id": "V1"})
    assert folded == 50 + 2 * 49  # lidar (the third name) every time, and the two new names after the first push


def link(failed: int, outages: int, seconds: float) -> dict[str, object]:
    return {"failed_attempts_total": failed, "outages_total": outages, "outage_seconds_total": seconds}


def test_link_counters_follow_the_per_boot_counting_model(clock: FakeClock) -> None:
    """Cumulative per boot like `errors`: highest per boot, summed over boots, retired boots kept in a sum, and
    the same through the state image (an aggregator restart)."""
    fleet = make_fleet(clock)
    fleet.apply(snap(boot_id="a", seq=1))  # an older bridge: no link view, no link counters
    v1 = fleet.get("V1")
    assert v1 is not None and v1.link_total == {}
    fleet.apply(snap(boot_id="a", seq=2, link=link(4, 1, 30.0)))
    fleet.apply(snap(boot_id="a", seq=3, link=link(2, 1, 10.0)))  # lower: never taken
    fleet.apply(snap(boot_id="b", seq=1, link=link(3, 2, 5.5)))  # a new boot adds up
    assert v1.link_total == link(7, 3, 35.5)
    for boot in range(TRACKED_BOOTS):  # retires a and b
        fleet.apply(snap(boot_id=f"later{boot}", seq=1, link=link(1, 0, 0.0)))
    assert "a" not in v1.boots and "b" not in v1.boots
    assert v1.link_total == link(7 + TRACKED_BOOTS, 3, 35.5)
    restored = make_fleet(FakeClock())
    state_image.restore(restored, codec.unpack_state(codec.pack_state(state_image.to_image(fleet))), keep_unknown=False)
    again = restored.get("V1")
    assert again is not None and again.link_total == v1.link_total
    restored.apply(snap(boot_id="later3", seq=2, link=link(2, 1, 4.0)))
    assert again.link_total == link(8 + TRACKED_BOOTS, 4, 39.5)


def test_link_counters_of_a_backlog_snapshot_count(clock: FakeClock) -> None:
    """A boot that ended during an outage has its last link counts only in the journal: they reach the totals."""
    fleet = make_fleet(clock)
    fleet.apply(snap(boot_id="a", seq=5, link=link(1, 0, 0.0)))
    fleet.merge_history(snap(boot_id="a", seq=9, link=link(6, 1, 42.0)))
    assert fleet.get("V1").link_total == link(6, 1, 42.0)  # type: ignore[union-attr]
