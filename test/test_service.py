"""The telemetry_aggregator command as operators run it: real processes, real sockets, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from peers import require_module
from support import AggregatorProcess, push, request, sample, scrape, wait_for, wire_snapshot
from tls_certs import ThrowawayCA

from tvm_observability.aggregator.persistence import StateFile
from tvm_observability.auth import hash_token
from tvm_observability.demo.processes import CLI_MODULE

CLI = [sys.executable, "-m", "tvm_observability.aggregator.cli"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=timeout)


def test_counters_and_state_survive_sigterm_and_kill_9(write_config, fleet_tokens, tmp_path: Path) -> None:
    state = tmp_path / "state" / "fleet.state"
    config = write_config(fleet_tokens, state_file=str(state), state_flush_interval_s=0.2)
    with AggregatorProcess(config) as agg:
        assert (
            push(agg.url, wire_snapshot("V1", boot_id="b1", seq=5, errors={"E1": 3}), fleet_tokens["V1"]).status == 200
        )
        assert push(agg.url, wire_snapshot("V2", errors={"E9": 1}), fleet_tokens["V2"]).status == 200
        assert agg.stop(signal.SIGTERM) == 0
        assert agg.find_log("stopped") is not None
        assert oct(state.stat().st_mode & 0o777) == "0o600"

        agg.start()
        m = scrape(agg.url)
        assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 3
        assert sample(m, "vehicle_errors_total", vehicle_id="V2", error_code="E9") == 1
        assert sample(m, "vehicle_battery_level", vehicle_id="V1") == 76.5
        # the vehicle retries what it sent before the restart: still not double-counted
        resp = push(agg.url, wire_snapshot("V1", boot_id="b1", seq=5, errors={"E1": 3}), fleet_tokens["V1"])
        assert resp.json()["status"] == "duplicate"
        # the bridge restarts (new boot) and reports one more event
        push(agg.url, wire_snapshot("V1", boot_id="b2", seq=1, errors={"E1": 1}), fleet_tokens["V1"])
        wait_for(
            lambda: StateFile(state).load()["vehicles"]["V1"]["boots"][-1]["boot_id"] == "b2",
            10,
            what="state flush",
        )
        assert agg.kill() == -signal.SIGKILL

        agg.start()
        m = scrape(agg.url)
        assert sample(m, "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 4
        assert sample(m, "vehicle_bridge_restarts_total", vehicle_id="V1") == 1
        ready = request(agg.url + "/readyz")
        assert ready.status == 200 and ready.json()["persistence"] == "ok"
    dump = run_cli("state", str(state))
    assert dump.returncode == 0, dump.stderr
    image = json.loads(dump.stdout)
    assert image["vehicles"]["V1"]["snapshot"]["boot_id"] == "b2"
    assert [b["errors"] for b in image["vehicles"]["V1"]["boots"]] == [{"E1": 3}, {"E1": 1}]
    assert run_cli("state", str(tmp_path / "nope")).returncode == 1


def test_corrupt_state_file_is_moved_aside_and_service_starts(write_config, fleet_tokens, tmp_path: Path) -> None:
    state = tmp_path / "fleet.state"
    state.write_bytes(b"\xc1 not msgpack")
    with AggregatorProcess(write_config(fleet_tokens, state_file=str(state))) as agg:
        assert request(agg.url + "/readyz").status == 200
        record = next(r for r in agg.logs if r["message"].startswith("state file unusable"))
        assert record["level"] == "ERROR"
        assert Path(record["context"]["moved_to"]).read_bytes() == b"\xc1 not msgpack"


def test_vehicle_goes_offline_in_real_time(write_config, fleet_tokens) -> None:
    with AggregatorProcess(write_config(fleet_tokens, offline_after_s=1)) as agg:
        push(agg.url, wire_snapshot("V3"), fleet_tokens["V3"])
        assert sample(scrape(agg.url), "vehicle_up", vehicle_id="V3") == 1
        wait_for(
            lambda: sample(scrape(agg.url), "vehicle_status", vehicle_id="V3", status="offline") == 1,
            10,
            what="V3 offline",
        )
        age = sample(scrape(agg.url), "vehicle_last_heartbeat_seconds_ago", vehicle_id="V3")
        assert age is not None and age > 1.0


def test_logs_are_json_in_the_fleet_layout(write_config, fleet_tokens) -> None:
    with AggregatorProcess(write_config(fleet_tokens)) as agg:
        # V2's credential writing V1: authenticated, so the refusal names the vehicle the body claims
        push(agg.url, wire_snapshot("V1"), fleet_tokens["V2"])
        wait_for(lambda: any(r["message"].startswith("push rejected") for r in agg.logs), 10, what="rejection log")
    record = next(r for r in agg.logs if r["message"].startswith("push rejected"))
    assert record["service"] == "telemetry_aggregator" and record["component"] == "ingest"
    assert record["level"] == "WARNING" and record["timestamp"].endswith("+00:00")
    assert record["context"]["vehicle_id"] == "V1" and len(record["context"]["request_id"]) == 16
    assert set(record["metadata"]) == {"host", "environment", "version"}
    assert record["metadata"]["environment"] == "test"
    assert not any("not-the-token" in line for line in agg.raw_stderr)


def test_non_loopback_listen_without_credentials_is_refused() -> None:
    result = run_cli("--listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "reachable from other machines" in result.stderr


def test_bad_config_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("offline_after_s: soon\nvehicles: {V1: {}}\nlimits: {max_body_bytes: -5}\n", encoding="utf-8")
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    for key in ("offline_after_s", "vehicles.V1.token_sha256", "limits.max_body_bytes"):
        assert key in result.stderr


def test_check_config(write_config, fleet_tokens) -> None:
    result = run_cli("--config", str(write_config(fleet_tokens)), "--check-config")
    assert result.returncode == 0 and "3 roster vehicles" in result.stdout


def test_token_subcommand_prints_token_once_and_roster_hash(tmp_path: Path) -> None:
    result = run_cli("token", "V7")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    token = lines[1]
    assert len(token) >= 40
    assert f'V7: {{token_sha256: "{hash_token(token)}"}}' in result.stdout
    out = tmp_path / "v8.token"
    result = run_cli("token", "V8", "--output", str(out))
    assert result.returncode == 0
    token = out.read_text().strip()
    assert token not in result.stdout and hash_token(token) in result.stdout
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    assert run_cli("token", "bad id").returncode == 2


def test_port_in_use_fails_clearly() -> None:
    with AggregatorProcess() as agg:
        result = run_cli("--listen", agg.url.removeprefix("http://"))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown(sig: int) -> None:
    agg = AggregatorProcess().start()
    assert agg.stop(sig) == 0
    assert agg.find_log("shutting down") and agg.find_log("stopped")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_plain_http_port_serves_on_either_event_loop(loop: str, write_config, fleet_tokens, tmp_path: Path) -> None:
    """uvloop when installed (the `uvloop` extra; `make test` installs it, so the other process tests run on it),
    asyncio's loop otherwise: pushes, scrapes and a clean stop on both (uvloop's transports do not derive from
    asyncio's: the connection guard once refused every connection on uvloop)."""
    if loop == "uvloop":
        require_module("uvloop", "pip install -e '.[uvloop]'")
    entry = [CLI_MODULE] if loop == "uvloop" else ["aggregator_on_asyncio"]
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    with AggregatorProcess(write_config(fleet_tokens), entry=entry, env=env) as agg:
        assert agg.find_log("listening")["context"]["event_loop"] == loop
        assert push(agg.url, wire_snapshot("V1", errors={"E1": 2}), fleet_tokens["V1"]).status == 200
        assert sample(scrape(agg.url), "vehicle_errors_total", vehicle_id="V1", error_code="E1") == 2
        assert push(agg.url, wire_snapshot("V1", seq=2), fleet_tokens["V1"]).status == 200
        assert agg.stop() == 0


def test_a_tls_port_runs_on_asyncio_even_where_uvloop_is_installed(write_config, fleet_tokens, tmp_path: Path) -> None:
    """With uvloop 0.23 the guarded TLS handshake stalls on some connections: a TLS port runs on asyncio's loop."""
    ca = ThrowawayCA(tmp_path / "pki")
    cert = ca.issue("localhost")
    config = write_config(fleet_tokens, tls={"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)})
    with AggregatorProcess(config) as agg:
        record = agg.find_log("listening")["context"]
        assert record["scheme"] == "https" and record["event_loop"] == "asyncio"
        assert agg.stop() == 0
