"""Every request of the hostile corpus against a real aggregator process: the right 4xx, counted by reason,
no change to the fleet state, the service still up, and a /metrics exposition that still parses."""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from hostile_corpus import BASE_SEQ, CORPUS, Case, baseline_wire
from peers import require_binary
from support import AggregatorProcess, Samples, parse_metrics, push, request, wait_for

from tvm_observability.aggregator.persistence import StateFile
from tvm_observability.auth import generate_token, hash_token

BODY_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 2.0
_VOLATILE = {"vehicle_last_heartbeat_seconds_ago"}
"""Fleet samples that change with time alone, not with state."""


class Hostile:
    """The aggregator under attack, with the tokens of its roster."""

    def __init__(self, agg: AggregatorProcess, tokens: dict[str, str], state_file: Path) -> None:
        self.agg = agg
        self.tokens = tokens
        self.state_file = state_file
        self.expositions: dict[str, str] = {}
        """The /metrics text after each corpus case, by case name: promtool checks them after the corpus."""

    def metrics_text(self) -> str:
        resp = request(self.agg.url + "/metrics")
        assert resp.status == 200
        return resp.body.decode("utf-8")

    def authorization(self, case: Case) -> str | None:
        if case.auth is None:
            return None
        if case.auth.startswith("raw:"):
            return case.auth[4:]
        if case.auth.startswith("hash:"):
            return "Bearer " + hash_token(self.tokens[case.auth[5:]])
        vehicle_id, _, suffix = case.auth.partition("+")
        return "Bearer " + self.tokens[vehicle_id] + suffix


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    tokens = {vid: generate_token() for vid in ("V1", "V2", "V3")}
    config = {
        "listen": "127.0.0.1:0",
        "environment": "test",
        "offline_after_s": 3600,
        "state_file": str(tmp / "state.msgpack"),
        "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()},
        # The per-vehicle rate limit has its own test; here it must not answer before validation does.
        "limits": {
            "rate_limit_per_vehicle_hz": 10_000,
            "rate_limit_burst": 10_000,
            "body_timeout_s": BODY_TIMEOUT_S,
            "idle_timeout_s": IDLE_TIMEOUT_S,
        },
    }
    path = tmp / "aggregator.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with AggregatorProcess(path) as agg:
        for vid in ("V1", "V2"):
            resp = push(agg.url, baseline_wire(vid), tokens[vid])
            assert resp.status == 200 and resp.json()["status"] == "accepted", resp.body
        yield Hostile(agg, tokens, tmp / "state.msgpack")
        # No token, no matter which request carried it, ever reaches a log line.
        logged = "".join(agg.raw_stderr)
        for token in tokens.values():
            assert token not in logged


def fleet_state(samples: Samples) -> Samples:
    """The vehicle_* samples that only a state change can alter."""
    return {k: v for k, v in samples.items() if k[0].startswith("vehicle") and k[0] not in _VOLATILE}


def counters(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of `name` summed by the value of one label."""
    sums: dict[str, float] = {}
    for (n, labels), value in samples.items():
        if n == name:
            key = dict(labels)[label]
            sums[key] = sums.get(key, 0.0) + value
    return sums


def send(hostile: Hostile, case: Case) -> int:
    """Send the case's request as its transport says; return the HTTP status of the answer."""
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    authorization = hostile.authorization(case)
    if authorization is not None:
        headers["Authorization"] = authorization
    body = case.payload()
    if case.transport == "http":
        return request(hostile.agg.url + case.path, case.method, body, headers).status
    return _raw_exchange(hostile.agg.url, case, headers, body)


def _raw_exchange(url: str, case: Case, headers: dict[str, str], body: bytes) -> int:
    """Chunked, stalled or dripped bodies over a plain socket; the server may answer before the body ends."""
    parts = urlsplit(url)
    if case.transport == "chunked":
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers.setdefault("Content-Length", str(len(body)))
    head = f"{case.method} {case.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        if case.transport == "slow_headers":
            return _drip_headers(sock, head.encode("latin-1"))
        sock.sendall(head.encode("latin-1"))
        started = time.monotonic()
        try:
            if case.transport == "chunked":
                for i in range(0, len(body), 4096):
                    chunk = body[i : i + 4096]
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            elif case.transport == "stall":
                sock.sendall(body[: len(body) // 2])
            elif case.transport == "drip":
                for byte in body:
                    sock.sendall(bytes([byte]))
                    if select.select([sock], [], [], 0.25)[0]:
                        break  # the server answered
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while the body was still coming: read its answer
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer, f"no answer after {time.monotonic() - started:.1f} s"
    return int(answer.split(b" ", 2)[1])


def _drip_headers(sock: socket.socket, head: bytes) -> int:
    """Send the head one byte every 0.25 s, never its end; 0 when the server closes without answering."""
    deadline = time.monotonic() + 10 * IDLE_TIMEOUT_S
    for byte in head[:-2] * 100:
        if time.monotonic() > deadline:
            break
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return 0
        if select.select([sock], [], [], 0.25)[0]:
            answer = sock.recv(4096)
            return int(answer.split(b" ", 2)[1]) if answer else 0
    raise AssertionError(f"a client dripping headers was still connected after {10 * IDLE_TIMEOUT_S:g} s")


def test_corpus_is_large_and_names_are_unique() -> None:
    assert len(CORPUS) >= 60
    assert len({c.name for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_hostile_request(hostile: Hostile, case: Case) -> None:
    before = parse_metrics(hostile.metrics_text())

    status = send(hostile, case)

    text = hostile.metrics_text()
    after = parse_metrics(text)  # the exposition still parses, whatever the request carried
    hostile.expositions[case.name] = text
    assert status == case.status, f"{case.name}: got {status}, want {case.status}"
    assert fleet_state(after) == fleet_state(before), f"{case.name} changed the fleet state"
    rejected_before = counters(before, "telemetry_snapshots_rejected_total", "reason")
    rejected_after = counters(after, "telemetry_snapshots_rejected_total", "reason")
    expected = dict(rejected_before)
    if case.reason is not None:
        expected[case.reason] = expected.get(case.reason, 0.0) + 1
    assert rejected_after == expected, f"{case.name}: rejection counters moved wrongly"
    duplicates = ("telemetry_snapshots_duplicate_total", frozenset())
    assert after[duplicates] - before[duplicates] == (1.0 if case.kind == "replays" else 0.0)
    if case.reason is None and case.status in (404, 405):
        by_status = counters(after, "http_requests_total", "status")
        assert by_status.get(str(case.status), 0) > counters(before, "http_requests_total", "status").get(
            str(case.status), 0
        )
    assert request(hostile.agg.url + "/healthz").status == 200
    assert hostile.agg.proc is not None and hostile.agg.proc.poll() is None


@pytest.mark.peer
def test_promtool_accepts_every_exposition_after_the_corpus(hostile: Hostile) -> None:
    """Runs after the corpus: promtool, Prometheus's own parser, accepts /metrics after every case."""
    promtool = require_binary("promtool")
    texts = {**hostile.expositions, "now": hostile.metrics_text()}
    for name, text in texts.items():
        result = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, f"{name}: " + result.stdout.decode() + result.stderr.decode()


def test_only_the_baseline_is_left_after_the_corpus(hostile: Hostile) -> None:
    """Runs after the corpus: the exported and the persisted state hold the two baseline snapshots only."""
    samples = parse_metrics(hostile.metrics_text())
    for vid in ("V1", "V2"):
        assert samples[("vehicle_errors_total", frozenset({("vehicle_id", vid), ("error_code", "motor_stall")}))] == 3
        assert samples[("vehicle_status", frozenset({("vehicle_id", vid), ("status", "idle")}))] == 1
    assert ("vehicle_errors_total", frozenset({("vehicle_id", "V1"), ("error_code", "estop")})) not in samples
    assert samples[("vehicles_total", frozenset())] == 3
    image = wait_for(lambda: hostile.state_file.exists() and StateFile(hostile.state_file).load(), 10)
    assert sorted(image["vehicles"]) == ["V1", "V2"]
    for saved in image["vehicles"].values():
        assert saved["boots"] == [
            {
                "boot_id": "boot-a",
                "seq": BASE_SEQ,
                "errors": {"motor_stall": 3},
                "overflow": 0,
                "history_seq": 0,
                "event_seq": 0,
                "link": {},
            }
        ]


def test_valid_push_still_accepted_after_the_corpus(hostile: Hostile) -> None:
    wire = baseline_wire("V1")
    wire["seq"] += 1_000
    resp = push(hostile.agg.url, wire, hostile.tokens["V1"])
    assert resp.status == 200 and resp.json()["status"] == "accepted"
