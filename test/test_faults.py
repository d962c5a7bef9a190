"""Faults with real aggregator processes: kill -9 under a pushing fleet, vehicle reboots, a full or unwritable
disk under the state file, clock skew. Ground truth comes from the pushers, never from the aggregator."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pushers import VehiclePusher, start_fleet
from support import AggregatorProcess, Samples, push, request, sample, scrape, wait_for, wire_snapshot

from tvm_observability.aggregator.persistence import StateFile
from tvm_observability.auth import generate_token


def errors_of(samples: Samples, vehicle_id: str) -> dict[str, int]:
    return {
        dict(labels)["error_code"]: int(value)
        for (name, labels), value in samples.items()
        if name == "vehicle_errors_total" and dict(labels)["vehicle_id"] == vehicle_id
    }


EPSILON_S = 0.01
"""Rounding between this process's clocks and the aggregator's exported values."""


@pytest.fixture
def roster() -> dict[str, str]:
    return {f"V{i}": generate_token() for i in range(1, 6)}


def test_kill_9_under_a_pushing_fleet_loses_and_doubles_nothing(tmp_path, write_config, roster) -> None:
    config = write_config(
        roster,
        state_file=str(tmp_path / "state.msgpack"),
        state_flush_interval_s=0.2,
        offline_after_s=3,
        limits={"rate_limit_per_vehicle_hz": 100, "rate_limit_burst": 100},
    )
    agg = AggregatorProcess(config).start()
    try:
        fleet = start_fleet(roster, lambda: agg.url, period_s=0.1)
        wait_for(lambda: all(p.accepted >= 10 for p in fleet.values()), 30, what="every vehicle to push")
        fleet["V5"].stop()  # V5 dies before the crash: it must come back offline, with its counts
        wait_for(lambda: "V5" in (StateFile(tmp_path / "state.msgpack").load() or {"vehicles": {}})["vehicles"], 10)
        time.sleep(0.5)
        for _ in range(2):  # two crashes, the second soon after the first restart
            assert agg.kill() == -9
            failures_before = sum(p.failures for p in fleet.values())
            wait_for(lambda fb=failures_before: sum(p.failures for p in fleet.values()) > fb + 4, 30)
            agg.start()
            accepted = {vid: p.accepted for vid, p in fleet.items()}
            wait_for(lambda a=accepted: all(fleet[v].accepted > a[v] + 5 for v in ("V1", "V2", "V3", "V4")), 30)
        live = ("V1", "V2", "V3", "V4")  # up while they push (checked now: once they stop, offline_after_s runs)
        wait_for(lambda: _all_up(agg.url, live), 30, what="the live vehicles up after the crashes")
        for pusher in fleet.values():
            if pusher.is_alive():
                pusher.stop()
        samples = wait_for(lambda: _settled(agg.url, fleet), 30, what="counts to settle")
        for vid, pusher in fleet.items():
            assert errors_of(samples, vid) == pusher.truth, vid
            assert sample(samples, "vehicle_bridge_restarts_total", vehicle_id=vid) == 0
        failed = sum(p.failures for p in fleet.values())
        assert failed > 0  # the crashes were seen by the fleet
        accepted = sum(p.accepted for p in fleet.values())
        print(f"\nkill -9 twice: {failed} pushes failed, {accepted} accepted, counts exact")
        wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V5") == 0, 10)
        final = scrape(agg.url)
        assert sample(final, "vehicle_status", vehicle_id="V5", status="offline") == 1
        assert sample(final, "vehicle_last_heartbeat_seconds_ago", vehicle_id="V5") > 3
    finally:
        agg.stop()


def _all_up(url: str, vehicle_ids: tuple[str, ...]) -> bool:
    samples = scrape(url)
    return all(sample(samples, "vehicle_up", vehicle_id=vid) == 1 for vid in vehicle_ids)


def _settled(url: str, fleet: dict[str, VehiclePusher]) -> Samples | None:
    samples = scrape(url)
    return samples if all(errors_of(samples, v) == p.truth for v, p in fleet.items()) else None


def test_vehicle_reboot_mid_run_keeps_every_count(tmp_path, write_config, roster) -> None:
    """A reboot starts a new boot_id with counts from zero; a late push of the old boot still counts."""
    tokens = {"V1": roster["V1"]}
    config = write_config(
        tokens,
        state_file=str(tmp_path / "state.msgpack"),
        state_flush_interval_s=0.2,
        limits={"rate_limit_per_vehicle_hz": 1000, "rate_limit_burst": 1000},
    )
    with AggregatorProcess(config) as agg:
        vehicle = VehiclePusher("V1", tokens["V1"], lambda: agg.url)
        for _ in range(30):
            vehicle.raise_errors()
            assert vehicle.push_once() == 200
        late = vehicle.snapshot()  # the old boot's last push, delivered only after the reboot
        vehicle.boot_counts["motor_stall"] = vehicle.boot_counts.get("motor_stall", 0) + 1
        vehicle.truth["motor_stall"] = vehicle.truth.get("motor_stall", 0) + 1
        late["errors"] = dict(vehicle.boot_counts)
        vehicle.reboot("boot-2")
        for _ in range(30):
            vehicle.raise_errors()
            assert vehicle.push_once() == 200
        resp = push(agg.url, late, tokens["V1"])
        assert resp.status == 200 and resp.json()["status"] == "previous_boot"
        samples = scrape(agg.url)
        assert errors_of(samples, "V1") == vehicle.truth
        assert sample(samples, "vehicle_bridge_restarts_total", vehicle_id="V1") == 1
        assert agg.stop() == 0  # a clean stop saves the latest state
    with AggregatorProcess(config) as agg:  # and the same after a restart of the aggregator
        assert errors_of(scrape(agg.url), "V1") == vehicle.truth


def test_clock_skew_of_hours_breaks_neither_age_nor_order(write_config, roster) -> None:
    tokens = {"V1": roster["V1"], "V2": roster["V2"]}
    with AggregatorProcess(write_config(tokens)) as agg:
        # Ages and times are bracketed by this process's own clocks around the pushes and the scrape (the same
        # machine's clocks), so the checks are about order and hold on a machine however loaded.
        now, started = time.time(), time.monotonic()
        assert push(agg.url, wire_snapshot("V1", seq=1, sent_at=now - 5 * 3600), tokens["V1"]).status == 200
        assert push(agg.url, wire_snapshot("V2", seq=1, sent_at=now + 3 * 3600), tokens["V2"]).status == 200
        samples = scrape(agg.url)
        elapsed, after = time.monotonic() - started, time.time()
        for vid, skew in (("V1", -5 * 3600), ("V2", 3 * 3600)):
            assert sample(samples, "vehicle_up", vehicle_id=vid) == 1
            # From the aggregator's clock: no older than the time since the push, not the vehicle's hours.
            assert sample(samples, "vehicle_last_heartbeat_seconds_ago", vehicle_id=vid) <= elapsed + EPSILON_S
            received = sample(samples, "vehicle_last_heartbeat_timestamp_seconds", vehicle_id=vid)
            assert now - EPSILON_S <= received <= after + EPSILON_S
            measured_skew = sample(samples, "vehicle_clock_skew_seconds", vehicle_id=vid)
            assert skew - (after - now) - EPSILON_S <= measured_skew <= skew + EPSILON_S
        # The vehicle clock jumps back a day (NTP fix): order is by seq, not by the vehicle's clock.
        jumped = wire_snapshot("V1", seq=2, sent_at=now - 29 * 3600, errors={"estop": 1})
        jump_at = time.monotonic()
        assert push(agg.url, jumped, tokens["V1"]).json()["status"] == "accepted"
        stale = wire_snapshot("V1", seq=1, sent_at=now + 3600, errors={"estop": 5})
        assert push(agg.url, stale, tokens["V1"]).json()["status"] == "duplicate"
        samples = scrape(agg.url)
        assert errors_of(samples, "V1") == {"estop": 1}
        # The jumped-back snapshot refreshed the heartbeat: it is younger than the time since that push.
        since_jump = time.monotonic() - jump_at
        assert sample(samples, "vehicle_last_heartbeat_seconds_ago", vehicle_id="V1") <= since_jump + EPSILON_S


# -- disk full / unwritable state file ---------------------------------------------------------


class DiskFault:
    """Makes the state file's writes fail and heal again, by one mechanism."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def break_(self, agg: AggregatorProcess) -> None:
        raise NotImplementedError

    def heal(self, agg: AggregatorProcess) -> None:
        raise NotImplementedError


class FileSizeLimit(DiskFault):
    """RLIMIT_FSIZE on the running aggregator (prlimit): writes past a few bytes fail with EFBIG. Unprivileged."""

    def break_(self, agg: AggregatorProcess) -> None:
        assert agg.proc is not None
        self.saved = resource.prlimit(agg.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(agg.proc.pid, resource.RLIMIT_FSIZE, (64, self.saved[1]))

    def heal(self, agg: AggregatorProcess) -> None:
        assert agg.proc is not None
        resource.prlimit(agg.proc.pid, resource.RLIMIT_FSIZE, self.saved)


class FullTmpfs(DiskFault):
    """A real ENOSPC: the state directory is a 1 MiB tmpfs, filled up by another file. Needs root and mount."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a tmpfs mount needs root and mount(8)")
        state_dir.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(state_dir)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def break_(self, agg: AggregatorProcess) -> None:
        with contextlib.suppress(OSError), open(self.state_dir / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()

    def heal(self, agg: AggregatorProcess) -> None:
        (self.state_dir / "filler").unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.state_dir)], check=False)


class DirectoryReplaced(DiskFault):
    """The state directory is swapped for a plain file (ENOTDIR/EEXIST even for root), then put back."""

    def break_(self, agg: AggregatorProcess) -> None:
        self.state_dir.rename(self.state_dir.with_name("moved"))
        self.state_dir.write_text("not a directory")

    def heal(self, agg: AggregatorProcess) -> None:
        self.state_dir.unlink()
        self.state_dir.with_name("moved").rename(self.state_dir)


@pytest.fixture(params=[FileSizeLimit, FullTmpfs, DirectoryReplaced], ids=["fsize-limit", "tmpfs-full", "dir-gone"])
def disk_fault(request, tmp_path) -> Iterator[DiskFault]:
    fault = request.param(tmp_path / "state")
    yield fault
    if isinstance(fault, FullTmpfs):
        fault.unmount()


def test_state_disk_failure_keeps_serving_reports_and_recovers(tmp_path, write_config, roster, disk_fault) -> None:
    tokens = {"V1": roster["V1"]}
    state_file = disk_fault.state_dir / "state.msgpack"
    config = write_config(tokens, state_file=str(state_file), state_flush_interval_s=0.1)
    with AggregatorProcess(config) as agg:
        vehicle = VehiclePusher("V1", tokens["V1"], lambda: agg.url)
        for _ in range(5):
            vehicle.raise_errors()
            assert vehicle.push_once() == 200
        wait_for(state_file.exists, 10, what="first save")
        assert request(agg.url + "/readyz").status == 200

        disk_fault.break_(agg)
        vehicle.truth["estop"] = vehicle.boot_counts["estop"] = vehicle.boot_counts.get("estop", 0) + 1
        pushes_during = [vehicle.push_once() for _ in range(3)]
        wait_for(lambda: request(agg.url + "/readyz").status == 503, 10, what="/readyz to report the failure")
        samples = scrape(agg.url)
        assert pushes_during == [200, 200, 200]  # ingest goes on
        assert sample(samples, "telemetry_state_persistence_healthy") == 0
        assert sample(samples, "telemetry_state_save_failures_total") >= 1
        assert errors_of(samples, "V1") == vehicle.truth
        readyz = request(agg.url + "/readyz").json()
        assert readyz["persistence"].startswith("failing: ")
        # The balancer's check leaves the state file out: a shard that still serves pushes is not ejected.
        assert request(agg.url + "/readyz?for=balancer").status == 200
        failures = "telemetry_state_save_failures_total"
        wait_for(lambda: sample(scrape(agg.url), failures) >= 3, 10, what="three failed flushes")  # retried

        disk_fault.heal(agg)
        wait_for(lambda: request(agg.url + "/readyz").status == 200, 10, what="/readyz to recover")
        assert sample(scrape(agg.url), "telemetry_state_persistence_healthy") == 1
        wait_for(lambda: agg.find_log("state file writable again"), 10, what="the recovery in the log")
        # The log is read in order: every line before the recovery has been read, so absence is a fact now.
        messages = [r["message"] for r in agg.logs]
        before = messages[: messages.index("state file writable again")]
        assert len([m for m in before if m.startswith("cannot write state file")]) == 1  # once, not per flush
        saved = StateFile(state_file).load()["vehicles"]["V1"]["boots"][-1]["errors"]
        assert saved == vehicle.boot_counts
    with AggregatorProcess(config) as agg:  # what was pushed during the fault survived a restart
        assert errors_of(scrape(agg.url), "V1") == vehicle.truth
