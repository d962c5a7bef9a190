"""A real vehicle_bridge with its journal: snapshots not acknowledged during an outage survive kill -9, the live
push resumes at once after it, and an aggregator without the history endpoint leaves the journal untouched."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from bridge_support import BridgeProcess, FakeVehicle, write_bridge_params, write_token
from support import AggregatorProcess, sample, scrape, wait_for
from test_bridge_faults import host_port

from tvm_observability.bridge.journal import JOURNAL_FILE, Journal
from tvm_observability.demo.link_proxy import LinkProxy

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


def journalled_bridge(tmp_path: Path, url: str, token: str, journal_root: Path, **params: object) -> Path:
    """V1's bridge parameters with its journal in `journal_root`, flushed every 0.5 s."""
    return write_bridge_params(
        tmp_path / "bridge.yaml",
        vehicle_id="V1",
        aggregator_url=url,
        token_file=str(write_token(tmp_path / "v1.token", token)),
        journal_dir=str(journal_root),
        journal_flush_interval_s=0.5,
        **params,
    )


def health(vehicle: FakeVehicle, key: str) -> int:
    return int(vehicle.latest_health().get(key) or 0)


def test_counts_of_a_boot_killed_in_an_outage_reach_the_aggregator_from_the_journal(
    ros_env, vehicle, tmp_path, fleet_tokens, write_config
):
    """Error events during an outage, then kill -9: the killed boot's last counts exist only in its journal.
    After the link returns, the next boot pushes live at once and uploads the backlog: vehicle_errors_total is
    exact, the journal empties. (Before the journal, the killed boot's outage events were lost for good.)"""
    config = write_config(fleet_tokens, offline_after_s=2)
    journal_root = tmp_path / "journal"
    with AggregatorProcess(config) as agg:

        def errors() -> float | None:
            return sample(scrape(agg.url), "vehicle_errors_total", vehicle_id="V1", error_code="CAM_USB")

        link = LinkProxy(host_port(agg.url))
        params = journalled_bridge(tmp_path, link.url, fleet_tokens["V1"], journal_root)
        try:
            with BridgeProcess(ros_env, params) as first:
                wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V1") == 1, 30, what="V1 up")
                vehicle.error_event("camera: driver", "CAM_USB")
                wait_for(lambda: errors() == 1, 30, what="the first event, live")
                # Online: every snapshot is acknowledged before the next flush, nothing stays in the journal.
                assert health(vehicle, "journal_entries") <= 1
                link.cut()
                for events in (2, 3):
                    vehicle.error_event("camera: driver", "CAM_USB")
                    wait_for(lambda e=events: health(vehicle, "error_events") == e, 30, what=f"event {events}")
                entries = health(vehicle, "journal_entries")
                # Flushed to disk after the last event: the snapshots that carry count 3 are on disk.
                wait_for(lambda: health(vehicle, "journal_entries") >= entries + 4, 30, what="journal flushes")
                first.stop(signal.SIGKILL)
            kept = journalled(journal_root / "V1")
            boot = first.boot_id()
            assert len(kept) >= 4 and {b for b, _ in kept} == {boot}
            seqs = [s for _, s in kept]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive, oldest first, no hole
            assert errors() == 1  # the outage's events have not arrived anywhere yet

            link.restore()
            with BridgeProcess(ros_env, params) as second:
                wait_for(lambda: second.boot_id() not in (None, boot), 30, what="second boot")
                wait_for(lambda: errors() == 3, 60, what="the killed boot's counts, from its journal")
                wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V1") == 1, 30, what="live again")
                wait_for(lambda: health(vehicle, "backlog_uploaded") >= len(kept), 60, what="backlog uploaded")
                wait_for(lambda: health(vehicle, "journal_entries") <= 1, 30, what="journal emptied")
                assert vehicle.latest_health()["backlog_state"] in ("idle", "draining")
                second.stop()
            assert errors() == 3  # exact: no event counted twice by the live and the history path
            history = sample(scrape(agg.url), "telemetry_history_snapshots_total", outcome="no_store")
            assert history is not None and history >= len(kept)
            assert journalled(journal_root / "V1")[: len(kept)] != kept  # the first boot's backlog is gone
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


def test_nothing_reaches_the_journal_file_while_the_link_is_up(ros_env, vehicle, tmp_path, fleet_tokens, write_config):
    """SD-card wear: with the link up every snapshot is acknowledged before the next flush, so flushes write
    nothing. (Flushing after the tick's add wrote each in-flight snapshot, then deleted it on its acknowledgement.)"""
    config = write_config(fleet_tokens)
    journal_root = tmp_path / "journal"
    with AggregatorProcess(config) as agg:
        params = journalled_bridge(tmp_path, agg.url, fleet_tokens["V1"], journal_root, publish_period_s=0.25)
        with BridgeProcess(ros_env, params) as bridge:
            wait_for(lambda: sample(scrape(agg.url), "vehicle_up", vehicle_id="V1") == 1, 30, what="V1 up")
            wait_for(lambda: any((journal_root / "V1").glob(JOURNAL_FILE + "*")), 30, what="the journal opened")
            wait_for(lambda: health(vehicle, "journal_entries") <= 1, 30, what="only the snapshot in flight")
            files = sorted((journal_root / "V1").glob(JOURNAL_FILE + "*"))
            sizes = {f.name: f.stat().st_size for f in files}
            received = sample(scrape(agg.url), "telemetry_snapshots_received_total") or 0.0
            # Twenty more snapshots and ten more flush intervals with the link up.
            wait_for(
                lambda: (sample(scrape(agg.url), "telemetry_snapshots_received_total") or 0.0) >= received + 20,
                60,
                what="twenty more pushes",
            )
            after = {f.name: f.stat().st_size for f in sorted((journal_root / "V1").glob(JOURNAL_FILE + "*"))}
            assert after == sizes, f"journal files grew with the link up: {sizes} -> {after}"
            bridge.stop()
