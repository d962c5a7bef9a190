"""Short load run (issue 5, "Load and soak"): 500 vehicles pushing at 1 Hz for 30 s over real HTTP to a real
aggregator process, through the bench/ load tool, with per-vehicle tokens. Nothing may fail or go missing.

No timing is asserted (latency and CPU figures belong to `make bench`); what is asserted is that every push
was accepted and counted, every vehicle is online and nothing was rejected. The long run is documented in
docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

from support import REPO, AggregatorProcess, sample, scrape

from tvm_observability.auth import generate_token

VEHICLES = 500
DURATION_S = 30.0


def test_500_vehicles_for_30_s_lose_nothing(write_config, tmp_path):
    tokens = {f"veh-{i:05d}": generate_token() for i in range(VEHICLES)}
    token_file = tmp_path / "tokens.json"
    token_file.write_text(json.dumps(tokens), encoding="utf-8")
    config = write_config(tokens, state_file=str(tmp_path / "state.msgpack"))
    with AggregatorProcess(config) as aggregator:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--url",
                aggregator.url,
                "--tokens",
                str(token_file),
                "--vehicles",
                str(VEHICLES),
                "--duration",
                str(DURATION_S),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=DURATION_S + 120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        summary = json.loads(run.stdout)
        samples = scrape(aggregator.url)

    assert summary["failed"] == 0, summary["errors"]
    # Each vehicle pushes about once per second for ramp + warm-up + window; at least the window's worth.
    assert summary["ok"] >= VEHICLES * DURATION_S
    assert sample(samples, "telemetry_snapshots_received_total") == summary["ok"]
    assert sample(samples, "telemetry_snapshots_duplicate_total") == 0
    assert sum(v for (name, _), v in samples.items() if name == "telemetry_snapshots_rejected_total") == 0
    assert sample(samples, "vehicles_online") == VEHICLES
    assert all(sample(samples, "vehicle_up", vehicle_id=vid) == 1.0 for vid in tokens)
    assert sample(samples, "vehicle_errors_total", vehicle_id="veh-00010", error_code="E_BUMPER") == 1.0
