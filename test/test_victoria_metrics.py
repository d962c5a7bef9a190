"""Backfill into a real VictoriaMetrics (Debian package `victoria-metrics`, single node) instead of Prometheus:
the aggregator's history endpoint, fed a backlog batch as the bridge sends one after an outage, writes the
vehicle's values through remote write (`history.remote_write_url` = VictoriaMetrics' `/api/v1/write`) at their
own timestamps and in the scrape's labels, read back through VictoriaMetrics' Prometheus API: raw samples from
`/api/v1/export`, and `/api/v1/query_range` as Grafana reads them. Samples three days old land too, which a
Prometheus with the shipped 1 d out-of-order window refuses: VictoriaMetrics needs no window, so
`history.max_sample_age_s` is set to the journal's horizon (at most VictoriaMetrics' `-retentionPeriod`) and
only what is older is dropped, by the aggregator, counted (docs/history.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from peers import VictoriaMetricsProcess, require_binary
from support import AggregatorProcess, push, sample, scrape, wait_for, wire_snapshot
from test_backfill import post_batch

pytestmark = [pytest.mark.peer, pytest.mark.timeout(180)]

DAY_S = 86_400
RETENTION = "30d"
"""VictoriaMetrics' `-retentionPeriod`: it silently drops (and still acknowledges) anything older."""
MAX_SAMPLE_AGE_S = 7 * DAY_S
"""The aggregator's `history.max_sample_age_s` for VictoriaMetrics: the vehicles' journal horizon, within the
retention; no out-of-order window to match."""
JOB, INSTANCE = "telemetry_aggregator", "fleet.example:9100"


def test_backlog_lands_in_victoria_metrics_at_its_own_times_days_back(tmp_path: Path, write_config, fleet_tokens):
    binary = require_binary("victoria-metrics")
    with VictoriaMetricsProcess(binary, tmp_path, f"-retentionPeriod={RETENTION}") as vm:
        history = {
            "remote_write_url": f"{vm.url}/api/v1/write",
            "job": JOB,
            "instance": INSTANCE,
            "max_sample_age_s": MAX_SAMPLE_AGE_S,
            "timeout_s": 5,
        }
        token = fleet_tokens["V1"]
        with AggregatorProcess(write_config(fleet_tokens, history=history)) as agg:
            now = time.time()
            # The link is back: the live push goes first (the aggregator measures the vehicle's clock skew) ...
            assert push(agg.url, wire_snapshot("V1", boot_id="b2", seq=1, sent_at=now), token).status == 200
            skew = sample(scrape(agg.url), "vehicle_clock_skew_seconds", vehicle_id="V1")
            assert skew is not None
            # ... then the backlog of the earlier boot: 20 s three days ago (past Prometheus's 1 d window), 20 s
            # a few minutes ago, and one snapshot older than max_sample_age_s.
            times = [round(now - 3 * DAY_S) + i for i in range(20)] + [round(now - 300) + i for i in range(20)]
            outage = [
                wire_snapshot(
                    "V1",
                    boot_id="b1",
                    seq=i + 1,
                    sent_at=t,
                    battery={"percentage": 90.0 - i, "voltage": 25.2, "charging": False, "age_s": 0.1},
                    sensors={"lidar": {"status": "error" if i % 2 else "ok", "rate_hz": 10.0, "message": ""}},
                )
                for i, t in enumerate(times)
            ]
            too_old = wire_snapshot("V1", boot_id="b1", seq=41, sent_at=now - MAX_SAMPLE_AGE_S - 3600)
            batch = [too_old, *outage]
            answer = post_batch(agg.url, token, batch)
            assert answer.status == 200, answer.body
            assert (answer.json()["written"], answer.json()["dropped"]) == (40, 1)

            battery = '{__name__="vehicle_battery_level",vehicle_id="V1"}'
            span = (now - 8 * DAY_S, now + 60)

            def exported() -> list[dict[str, Any]] | None:
                series = vm.export(battery, *span)
                return series if series and len(series[0]["values"]) >= 40 else None

            series = wait_for(exported, 60, interval=0.5, what="the backfilled samples in victoria-metrics")
            assert len(series) == 1
            assert series[0]["metric"] == {
                "__name__": "vehicle_battery_level",
                "vehicle_id": "V1",
                "job": JOB,
                "instance": INSTANCE,
            }
            got = sorted(zip(series[0]["timestamps"], series[0]["values"], strict=True))
            assert [v for _, v in got] == [90.0 - i for i in range(40)]
            # Each at the vehicle's own time, corrected by the skew the live push measured (to the millisecond).
            assert all(abs(ms - (t - skew) * 1000) <= 1 for (ms, _), t in zip(got, times, strict=True)), got

            # The sensor series carry their own labels as the scrape exports them.
            lidar = vm.export('{__name__="vehicle_sensor_status",sensor="lidar",status="error"}', *span)
            assert [s["metric"] for s in lidar] == [
                {
                    "__name__": "vehicle_sensor_status",
                    "vehicle_id": "V1",
                    "sensor": "lidar",
                    "status": "error",
                    "job": JOB,
                    "instance": INSTANCE,
                }
            ]
            assert lidar[0]["values"] == [float(i % 2) for i in range(40)]

            # Grafana's view: query_range at 1 s steps over the three-day-old part, the vehicle's value each second.
            start = times[0] - skew
            matrix = vm.api(
                "query_range",
                query=f'vehicle_battery_level{{vehicle_id="V1",job="{JOB}"}}',
                start=f"{start:.3f}",
                end=f"{start + 19:.3f}",
                step="1s",
            )["result"]
            assert [float(v) for _, v in matrix[0]["values"]] == [90.0 - i for i in range(20)]

            # The acknowledgement was lost, the bridge sends the batch again: nothing is written twice.
            again = post_batch(agg.url, token, batch)
            assert again.status == 200 and again.json()["already_written"] == 41
            samples = scrape(agg.url)
            assert sample(samples, "telemetry_history_snapshots_total", outcome="written") == 40
            assert sample(samples, "telemetry_history_snapshots_dropped_total", reason="too_old") == 1
            assert len(vm.export(battery, *span)[0]["values"]) == 40
