"""A real vehicle_bridge with its journal: snapshots not acknowledged during an outage survive kill -9, the live
push resumes at once after it, and an aggregator without the history endpoint leaves the journal untouched."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from bridge_support import BridgeProcess, FakeVehicle, write_bridge_params, write_token
from link_proxy import LinkProxy
from support import AggregatorProcess, sample, scrape, wait_for
from test_bridge_faults import host_port

from tvm_observability.bridge.journal import JOURNAL_FILE, Journal

pytestmark = pytest.mark.ros


@pytest.fixture
def vehicle(ros_env):
    fake = FakeVehicle()
    yield fake
    fake.close()


def journalled(directory: Path) -> list[tuple[str, int]]:
    journal = Journal(directory, max_bytes=10**9, max_age_s=10**6)
    try:
        return [(e.boot_id, e.seq) for e in journal.oldest(100_000, 10**9)]
    finally:
        journal.close()


def test_outage_is_journalled_survives_kill_9_and_live_resumes_first(
    ros_env, vehicle, tmp_path, fleet_tokens, write_config
):
    config = write_config(fleet_tokens, offline_after_s=2)
    journal_root = tmp_path / "journal"
    with AggregatorProcess(config) as agg:
        link = LinkProxy(host_port(agg.url))
        params = write_bridge_params(
            tmp_path / "bridge.yaml",
            vehicle_id="V1",
            aggregator_url=link.url,
            token_file=str(write_token(tmp_path / "v1.token", fleet_tokens["V1"])),
            journal_dir=str(journal_root),
            journal_flush_interval_s=0.5,
        )
        try:
            with BridgeProcess(ros_env, params) as first:
                wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V1") == 1, 30, what="V1 up")
                # Online: every snapshot is acknowledged before the next flush, nothing is written.
                wait_for(lambda: int(vehicle.latest_health().get("pushes_accepted", "0")) >= 4, 30)
                assert vehicle.latest_health()["journal_entries"] in ("0", "1")
                boot = first.boot_id()
                link.cut()
                wait_for(lambda: int(vehicle.latest_health().get("journal_entries", "0")) >= 12, 60, what="backlog")
                first.stop(signal.SIGKILL)
            kept = journalled(journal_root / "V1")
            assert len(kept) >= 10
            assert {b for b, _ in kept} == {boot}
            seqs = [s for _, s in kept]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive, oldest first, no hole

            # This aggregator has no history endpoint (an older version): live works, the journal is kept.
            link.restore()
            with BridgeProcess(ros_env, params) as second:
                wait_for(lambda: second.boot_id() not in (None, boot), 30, what="second boot")
                wait_for(lambda: vehicle.latest_health().get("backlog_state") == "unsupported", 60)
                wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V1") == 1, 30, what="live again")
                wait_for(lambda: int(vehicle.latest_health().get("pushes_accepted", "0")) >= 2, 30)
                assert second.output.count("has no history endpoint") == 1
                second.stop()
            after = journalled(journal_root / "V1")
            assert after[: len(kept)] == kept  # nothing of the first boot was deleted unacknowledged
        finally:
            link.close()


def test_corrupt_journal_is_replaced_and_reported_not_a_crash(ros_env, vehicle, tmp_path):
    journal_root = tmp_path / "journal"
    (journal_root / "V1").mkdir(parents=True)
    (journal_root / "V1" / JOURNAL_FILE).write_bytes(b"garbage, not sqlite" * 64)
    params = write_bridge_params(
        tmp_path / "bridge.yaml", vehicle_id="V1", aggregator_url="http://127.0.0.1:9", journal_dir=str(journal_root)
    )
    with BridgeProcess(ros_env, params) as bridge:
        wait_for(lambda: vehicle.latest_health().get("journal_replaced") == "1", 30, what="journal replaced")
        assert "moved aside" in vehicle.latest_health()["journal_problem"]
        assert "moved aside" in bridge.output
        assert bridge.proc is not None and bridge.proc.poll() is None
        bridge.stop()
    assert (journal_root / "V1" / f"{JOURNAL_FILE}.corrupt").read_bytes().startswith(b"garbage")
