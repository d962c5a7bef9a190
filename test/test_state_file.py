"""The state file across versions and faults: migration of older formats, refusal of newer ones and of files that
cannot be read, safe atomic writes, and `telemetry_aggregator state` on anything a snapshot may carry."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from peers import require_binary
from support import AggregatorProcess, FakeClock, push, sample, scrape, wait_for, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import state_image
from tvm_observability.aggregator.cli import EXIT_STATE_REFUSED
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import parse_snapshot
from tvm_observability.aggregator.persistence import StateFile, StateUnreadable
from tvm_observability.aggregator.state_image import NewerStateFormat

FORMAT_2 = Path(__file__).parent / "data" / "state-format-2.msgpack"
"""Written by the format-2 aggregator (test/data/make_state_format_2.py says how)."""
CLI = [sys.executable, "-m", "tvm_observability.aggregator.cli"]


def format_2_fleet(clock: FakeClock) -> FleetState:
    """The roster and settings the format-2 file was written with."""
    return FleetState(("V1", "V2", "V3"), FleetSettings(max_error_code_series=3, max_unknown_vehicles=5), clock=clock)


def refused_start(config: Path) -> AggregatorProcess:
    """Start an aggregator that must refuse to start; fail (and stop it) if it listens instead."""
    agg = AggregatorProcess(config)
    try:
        agg.start()
    except AssertionError:  # it exited (or hung without listening: then it is killed, and has no exit status)
        agg.__exit__()
        return agg
    agg.stop()
    raise AssertionError("the aggregator started")


def refusal_record(agg: AggregatorProcess) -> dict:
    """The ERROR line saying why the aggregator would not start."""
    record = wait_for(
        lambda: next((r for r in agg.logs if r["message"].startswith("refusing to start: ")), None),
        10,
        what="the refusal in the log",
    )
    assert record["level"] == "ERROR" and record["component"] == "service"
    return record


# -- formats ------------------------------------------------------------------------------------


def test_format_2_file_restores_every_counter() -> None:
    image = StateFile(FORMAT_2).load()
    assert image is not None and image["format"] == 2
    clock = FakeClock(wall=1_800_000_100.0)
    fleet = format_2_fleet(clock)
    assert state_image.restore(fleet, image, keep_unknown=True) == []
    v1, v2, v3, x7 = (fleet.get(vid) for vid in ("V1", "V2", "V3", "X7"))
    assert v1 is not None and v2 is not None and v3 is not None and x7 is not None
    assert v1.errors_total == {"E1": 21, "E2": 6, "other": 16}
    assert v1.restarts == 5 and v1.boot_id == "v1-boot5" and list(v1.codes) == ["E1", "E2"]
    assert {b: r.seq for b, r in v1.boots.items()} == {"v1-boot2": 3, "v1-boot3": 3, "v1-boot4": 3, "v1-boot5": 7}
    assert v1.snapshot is not None and v1.snapshot.status == "charging"
    assert v1.heartbeat_age(clock.monotonic()) == pytest.approx(94.0)
    assert v2.errors_total == {} and not v2.boots
    assert v3.errors_total == {"E_LIDAR": 9} and v3.snapshot is not None and v3.snapshot.battery is not None
    assert v3.snapshot.battery.percentage == 11.0 and set(v3.sensors) == {"lidar", "camera"}
    assert not x7.on_roster and x7.boot_id == "x7-a"
    # what format 2 knew still works: a retry of the last push is a duplicate, a new boot adds up
    retry = parse_snapshot(wire_snapshot("V1", boot_id="v1-boot5", seq=7, errors={"E1": 6}))
    assert fleet.apply(retry).value == "duplicate"
    fleet.apply(parse_snapshot(wire_snapshot("V1", boot_id="v1-boot6", seq=1, errors={"E1": 1})))
    assert v1.errors_total == {"E1": 22, "E2": 6, "other": 16} and v1.restarts == 6


def test_format_2_file_through_an_upgraded_service(write_config, fleet_tokens, tmp_path: Path) -> None:
    state = tmp_path / "state.msgpack"
    shutil.copyfile(FORMAT_2, state)
    config = write_config(
        fleet_tokens, state_file=str(state), state_flush_interval_s=0.1, limits={"max_error_codes_per_vehicle": 3}
    )
    with AggregatorProcess(config) as agg:
        m = scrape(agg.url)
        assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 21
        assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E2") == 6
        assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="other") == 16
        assert sample(m, "vehicle_bridge_restarts_total", vehicle_id="V1") == 5
        assert sample(m, "vehicle_errors_total", vehicle_id="V3", error_code="E_LIDAR") == 9
        assert sample(m, "vehicle_battery_level", vehicle_id="V3") == 11.0
        push(agg.url, wire_snapshot("V3", boot_id="v3-a", seq=13, errors={"E_LIDAR": 10}), fleet_tokens["V3"])
        assert agg.stop() == 0
    saved = StateFile(state).load()
    assert saved is not None and saved["format"] == state_image.STATE_FORMAT
    assert saved["vehicles"]["V1"]["retired"] == {"E1": 3, "E2": 2, "other": 4}
    assert list(tmp_path.glob("state.msgpack.corrupt-*")) == []


def test_newer_format_is_refused_not_quarantined(write_config, fleet_tokens, tmp_path: Path) -> None:
    fleet = format_2_fleet(FakeClock())
    with pytest.raises(NewerStateFormat):
        state_image.restore(fleet, {"format": state_image.STATE_FORMAT + 1, "vehicles": {}}, keep_unknown=False)
    state = tmp_path / "state.msgpack"
    newer = codec.pack_state({"format": state_image.STATE_FORMAT + 1, "vehicles": {}, "geofences": []})
    state.write_bytes(newer)
    agg = refused_start(write_config(fleet_tokens, state_file=str(state)))
    assert agg.proc is not None and agg.proc.returncode == EXIT_STATE_REFUSED
    record = refusal_record(agg)
    assert "newer version" in record["message"] and record["context"]["path"] == str(state)
    assert state.read_bytes() == newer and list(tmp_path.glob("state.msgpack.corrupt-*")) == []


def test_migrations_chain_to_the_current_format() -> None:
    """Every older format has its step, so a format-N image reaches the current one a function at a time."""
    assert sorted(state_image.MIGRATIONS) == list(range(2, state_image.STATE_FORMAT))
    image = StateFile(FORMAT_2).load()
    assert image is not None
    migrated = state_image.migrate(image)
    assert migrated["format"] == state_image.STATE_FORMAT and image["format"] == 2  # the input is not changed
    fleet = format_2_fleet(FakeClock())
    state_image.restore(fleet, migrated, keep_unknown=True)
    assert state_image.to_image(fleet)["vehicles"].keys() == migrated["vehicles"].keys()


def test_format_5_image_gains_empty_link_counters_and_bad_ones_are_corrupt() -> None:
    """Format 6 adds the link counters (boots[].link, link_retired): a format-5 image keeps every other counter."""
    fleet = format_2_fleet(FakeClock())
    fleet.apply(parse_snapshot(wire_snapshot("V1", boot_id="b1", seq=3, errors={"E1": 2})))
    image = state_image.to_image(fleet)
    saved = image["vehicles"]["V1"]
    del saved["link_retired"]
    for boot in saved["boots"]:
        del boot["link"]
    five = {**image, "format": 5}
    restored = format_2_fleet(FakeClock())
    state_image.restore(restored, five, keep_unknown=False)
    v1 = restored.get("V1")
    assert v1 is not None and v1.errors_total == {"E1": 2} and v1.link_total == {} and v1.link_retired == {}
    link = {"failed_attempts_total": 1, "outages_total": 1, "outage_seconds_total": 2.5}
    restored.apply(parse_snapshot(wire_snapshot("V1", boot_id="b1", seq=4, errors={"E1": 2}, link=link)))
    assert v1.link_total == link
    broken = state_image.to_image(restored)
    broken["vehicles"]["V1"]["boots"][0]["link"]["outage_seconds_total"] = -1.0
    with pytest.raises(state_image.CorruptState):
        state_image.restore(format_2_fleet(FakeClock()), broken, keep_unknown=False)


# -- files the service must not start on ---------------------------------------------------------


def test_unreadable_state_file_refuses_to_start(write_config, fleet_tokens, tmp_path: Path) -> None:
    """A directory where the file should be cannot be read, by root too: nothing is moved, the service stops."""
    state = tmp_path / "state.msgpack"
    state.mkdir()
    (state / "keep").write_text("operator's file", encoding="utf-8")
    with pytest.raises(StateUnreadable):
        StateFile(state).load()
    agg = refused_start(write_config(fleet_tokens, state_file=str(state)))
    assert agg.proc is not None and agg.proc.returncode == EXIT_STATE_REFUSED
    record = refusal_record(agg)
    assert f"cannot read the state file {state}" in record["message"]
    assert (state / "keep").read_text(encoding="utf-8") == "operator's file"
    assert list(tmp_path.glob("state.msgpack.corrupt-*")) == []


def test_state_file_that_is_not_a_regular_file_refuses_to_start(write_config, fleet_tokens, tmp_path: Path) -> None:
    """A FIFO blocked start-up before the first log line; a device was read without end, or renamed aside as
    corrupt (`/dev/null` moved away for the whole machine). Neither is read, moved or replaced."""
    fifo = tmp_path / "state.msgpack"
    os.mkfifo(fifo)
    with pytest.raises(StateUnreadable, match="not a regular file"):
        StateFile(fifo).load()
    agg = refused_start(write_config(fleet_tokens, state_file=str(fifo)))
    assert agg.proc is not None and agg.proc.returncode == EXIT_STATE_REFUSED
    assert "not a regular file" in refusal_record(agg)["message"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and list(tmp_path.glob("state.msgpack.corrupt-*")) == []
    with pytest.raises(StateUnreadable, match="not a regular file"):
        StateFile(os.devnull).load()


@contextlib.contextmanager
def unwritable_directory(path: Path) -> Iterator[None]:
    """Make `path` a directory this process cannot change: immutable for root (which ignores modes), 0555 else."""
    if os.geteuid() == 0:
        chattr = require_binary("chattr")
        subprocess.run([chattr, "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)


def test_corrupt_file_that_cannot_be_moved_aside_refuses_to_start(write_config, fleet_tokens, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state = state_dir / "state.msgpack"
    state.write_bytes(b"\xc1 not msgpack")
    config = write_config(fleet_tokens, state_file=str(state))
    with unwritable_directory(state_dir):
        agg = refused_start(config)
    assert agg.proc is not None and agg.proc.returncode == EXIT_STATE_REFUSED
    message = refusal_record(agg)["message"]
    assert f"the state file {state} is unusable" in message and "cannot be moved aside" in message
    assert not any("cannot listen" in line for line in agg.raw_stderr)
    assert state.read_bytes() == b"\xc1 not msgpack"


def test_systemd_unit_does_not_restart_on_a_refused_state_file() -> None:
    unit = (Path(__file__).parent.parent / "config/systemd/telemetry-aggregator.service").read_text(encoding="utf-8")
    line = next(line for line in unit.splitlines() if line.startswith("RestartPreventExitStatus="))
    assert {"2", str(EXIT_STATE_REFUSED)} <= set(line.partition("=")[2].split())


# -- writing -------------------------------------------------------------------------------------


def test_save_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state = tmp_path / "state.msgpack"
    for name in (".state.msgpack.tmp", ".state.msgpack.tmp.tmp"):  # the old fixed name, and a guess at the new
        (tmp_path / name).symlink_to(victim)
    StateFile(state).save({"format": state_image.STATE_FORMAT, "vehicles": {}})
    assert victim.read_bytes() == b"precious"
    assert StateFile(state).load() == {"format": state_image.STATE_FORMAT, "vehicles": {}}
    assert oct(state.stat().st_mode & 0o777) == "0o600" and not state.is_symlink()


def test_failed_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    state = tmp_path / "state.msgpack"
    state.mkdir()  # the rename over it fails
    (state / "x").write_text("x", encoding="utf-8")
    with pytest.raises(OSError):
        StateFile(state).save({"format": state_image.STATE_FORMAT, "vehicles": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.msgpack"]


def test_temporary_files_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.msgpack")
    (tmp_path / ".state.msgpack.k2j4x9.tmp").write_bytes(b"half a save")
    (tmp_path / "unrelated.tmp").write_bytes(b"not ours")
    assert state.remove_stale_temps() == [tmp_path / ".state.msgpack.k2j4x9.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.tmp"]


# -- telemetry_aggregator state ------------------------------------------------------------------


def test_state_command_prints_binary_and_extension_values(tmp_path: Path) -> None:
    wire = wire_snapshot("V1", future={"blob": b"\x00\xffraw", "tagged": msgpack.ExtType(5, b"\x01\x02")})
    wire["stamp"] = msgpack.Timestamp(1_800_000_000)
    body = codec.encode_wire(wire)
    fleet = FleetState(["V1"], clock=FakeClock())
    fleet.apply(parse_snapshot(codec.decode(body)), body)
    path = tmp_path / "state.msgpack"
    StateFile(path).save(state_image.to_image(fleet))
    result = subprocess.run([*CLI, "state", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)["vehicles"]["V1"]["snapshot"]
    assert snapshot["future"]["blob"] == {"$bin": base64.b64encode(b"\x00\xffraw").decode()}
    assert snapshot["future"]["tagged"] == {"$ext": 5, "data": base64.b64encode(b"\x01\x02").decode()}
    assert snapshot["stamp"]["$ext"] == -1 and snapshot["battery"]["percentage"] == 76.5


# -- boots older than the tracked ones -----------------------------------------------------------


def test_retired_boot_is_refused_over_http_also_after_a_restart(write_config, fleet_tokens, tmp_path: Path) -> None:
    state = tmp_path / "state.msgpack"
    config = write_config(fleet_tokens, state_file=str(state))
    with AggregatorProcess(config) as agg:
        token = fleet_tokens["V1"]
        assert push(agg.url, wire_snapshot("V1", boot_id="b0", seq=1, errors={"E1": 2}), token).status == 200
        for boot in range(1, 5):
            assert push(agg.url, wire_snapshot("V1", boot_id=f"b{boot}", seq=1, errors={"E1": 1}), token).status == 200
        stale = wire_snapshot("V1", boot_id="b0", seq=2, errors={"E1": 3}, battery={"percentage": 5.0, "age_s": 0.1})
        for _ in range(2):  # refused before the restart, and after it (the retired ids are in the state file)
            resp = push(agg.url, stale, token)
            assert resp.status == 409 and resp.json()["error"] == "stale_boot"
            m = scrape(agg.url)
            assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 6
            assert sample(m, "vehicle_battery_level", vehicle_id="V1") == 76.5
            assert sample(m, "telemetry_snapshots_rejected_total", reason="stale_boot") == 1
            assert agg.stop() == 0
            agg.start()
