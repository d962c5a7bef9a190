"""Test helpers shared by the suites: real aggregator processes, real HTTP pushes, /metrics parsing,
and ROS_DOMAIN_ID allocation so tests that start ROS nodes never hear each other."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from tvm_observability import codec
from tvm_observability.demo import processes
from tvm_observability.model import ROUTING_HEADER, TELEMETRY_PATH

REPO = Path(__file__).resolve().parent.parent
MSGPACK = {"Content-Type": "application/msgpack"}

# ROS 2 domain ids usable with Fast DDS port arithmetic: 1..101 (0 is everyone's default).
_DOMAIN_IDS = range(1, 102)
_DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / "tvm_observability_ros_domains"


@contextlib.contextmanager
def ros_domain() -> Iterator[dict[str, str]]:
    """Hold a ROS_DOMAIN_ID no other test process on this machine holds; yield the env to run nodes with.

    Discovery is limited to localhost, so nothing leaves the machine either.
    """
    _DOMAIN_LOCK_DIR.mkdir(exist_ok=True)
    start = os.getpid() % len(_DOMAIN_IDS)
    for offset in range(len(_DOMAIN_IDS)):
        domain = _DOMAIN_IDS[(start + offset) % len(_DOMAIN_IDS)]
        handle = open(_DOMAIN_LOCK_DIR / f"{domain}.lock", "w")  # noqa: SIM115 - held for the block
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise RuntimeError("no free ROS_DOMAIN_ID: too many ROS tests at once")


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until predicate() is truthy and return its value; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, http.client.HTTPException) as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last error: {last_error!r})")


class Response:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One real HTTP request on a fresh connection (no retries, no redirects)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def push(base_url: str, wire: Mapping[str, Any], token: str | None = None, **headers: str) -> Response:
    """POST one snapshot (a wire map) to the aggregator."""
    all_headers = dict(MSGPACK)
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers)
    return request(base_url + "/api/v1/telemetry", "POST", codec.encode_wire(dict(wire)), all_headers)


def raw_push(
    vehicle_id: str = "V1", token: str = "t", seq: int = 1, *, headers: list[tuple[str, str]] | None = None
) -> bytes:
    """A push as the bytes of one HTTP/1.1 request (routing header and credential included), with `headers` added:
    for tests that write to a socket themselves (pipelining, split writes, hostile framing)."""
    body = codec.encode_wire(wire_snapshot(vehicle_id, seq=seq))
    lines = [
        f"POST {TELEMETRY_PATH} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/msgpack",
        f"{ROUTING_HEADER}: {vehicle_id}",
        f"Authorization: Bearer {token}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def wire_snapshot(vehicle_id: str = "V1", *, boot_id: str = "boot-a", seq: int = 1, **fields: Any) -> dict[str, Any]:
    """A valid schema-v1 map with realistic values; keyword arguments replace fields."""
    wire: dict[str, Any] = {
        "v": 1,
        "vehicle_id": vehicle_id,
        "boot_id": boot_id,
        "seq": seq,
        "sent_at": time.time(),
        "status": "idle",
        "battery": {"percentage": 76.5, "voltage": 25.2, "charging": False, "age_s": 0.4},
        "position": {"latitude": 52.5200, "longitude": 13.4050, "altitude": 34.0, "fix": True, "age_s": 0.2},
        "pose": {"x": 12.5, "y": -3.0, "yaw": 1.57, "speed": 0.8, "frame_id": "odom", "age_s": 0.05},
        "sensors": {
            "lidar": {"status": "ok", "rate_hz": 10.0, "message": ""},
            "camera": {"status": "ok", "rate_hz": 15.0, "message": ""},
        },
        "errors": {},
    }
    wire.update(fields)
    return wire


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a text exposition, keyed by (name, labels); fails on malformed output."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(base_url: str) -> Samples:
    resp = request(base_url + "/metrics")
    assert resp.status == 200, resp.body
    return parse_metrics(resp.body.decode("utf-8"))


class AggregatorProcess:
    """A real `telemetry_aggregator` process on an ephemeral loopback port; JSON logs collected.

    The process itself is run by tvm_observability.demo.processes, as in the demo and the benchmarks; stopping
    it (a signal, then SIGKILL) is that module's ChildProcess's.
    """

    def __init__(
        self,
        config: Path | None = None,
        *,
        listen: str = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
        entry: Sequence[str] = (processes.CLI_MODULE,),
    ):
        command = processes.aggregator_command(config, listen=listen, entry=entry)
        self.process = processes.AggregatorProcess(command, env={**os.environ, **(env or {})})

    @property
    def proc(self) -> subprocess.Popen[str] | None:
        return self.process.proc

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log record so far."""
        return list(self.process.records)

    @property
    def raw_stderr(self) -> list[str]:
        """Every output line so far (the logs go to stderr)."""
        return self.process.output.splitlines(keepends=True)

    def start(self, timeout: float = 20.0) -> AggregatorProcess:
        try:
            self.process.start(timeout)
        except processes.AggregatorStartError as exc:
            raise AssertionError(str(exc)) from None
        return self

    def find_log(self, message: str) -> dict[str, Any] | None:
        return self.process.find_log(message)

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        return self.process.stop(sig, timeout)

    def kill(self) -> int:
        return self.process.kill()

    def __enter__(self) -> AggregatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.process.__exit__(*exc)


class FakeClock:
    """A hand-driven clock for FleetState and make_app: monotonic and wall time advance together."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self._mono = 1000.0
        self._wall = wall

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds
