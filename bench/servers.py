"""The servers under test, each started pinned to one core (taskset), on an ephemeral loopback port.

- the aggregator (the real CLI, a roster of N vehicles with per-vehicle tokens, state file on as deployed);
- the Debian prometheus-pushgateway, with its default settings or with the consistency check off;
- a bare aiohttp server whose one handler reads the body and answers 200: the floor for any aiohttp service.

CPU time and RSS come from /proc/<pid>.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tvm_observability.auth import hash_token
from tvm_observability.demo import processes

from .loadgen import vehicle_id

SERVER_CORE = 0
LOAD_CORE = 1
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
_TICK = os.sysconf("SC_CLK_TCK")
_KEEP_LINES = 200
"""Lines of a server's output kept for the message when it fails."""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[Any]
    host: str = "127.0.0.1"
    port: int = 0
    output: Iterable[str] = ()
    """What it writes, as far as kept (the last _KEEP_LINES lines)."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, grace_s: float = 20.0) -> None:
        processes.stop_process(self.proc, signal.SIGTERM, grace_s)


BENCH_NICE = -10


def run_alone(tag: str, run_all: Callable[..., dict[str, Any]], **options: Any) -> dict[str, Any]:
    """One benchmark module on its own (`python -m bench.<module>`), as `make bench` runs it: this process (the
    load) pinned to the load core and prioritised, a private work directory, progress lines on stderr tagged
    `tag`; returns what `run_all(workdir, log, **options)` measured."""
    os.sched_setaffinity(0, {LOAD_CORE})
    prioritise()

    def log(message: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix=f"tvm-{tag}-bench-") as tmp:
        return run_all(Path(tmp), log, **options)


def prioritise() -> int:
    """Run this process and the servers it starts at nice -10 where allowed (root): other work on a shared
    machine then disturbs the measurement less. Returns the niceness in effect."""
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, BENCH_NICE)
    return os.getpriority(os.PRIO_PROCESS, 0)


def pinned(argv: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_tokens(vehicles: int) -> dict[str, str]:
    """Deterministic per-vehicle bearer tokens (benchmark only; real ones come from `telemetry_aggregator token`)."""
    return {vehicle_id(i): hashlib.sha256(f"bench-token-{i}".encode()).hexdigest() for i in range(vehicles)}


def _tail(server: Server) -> str:
    return "".join(list(server.output)[-20:])


def _wait(server: Server, ready: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {_tail(server)}")
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{server.name} not ready after {timeout:g} s: {_tail(server)}")


def _get(url: str, path: str, timeout: float = 5.0) -> int:
    host, _, port = url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


CONNECTION_HEADROOM = 100
"""Connections beyond one per vehicle (`limits.max_connections`): the scraper's, a health check's. At the default
cap of 10,000 a 10,000-vehicle load took every connection and each whole-fleet scrape was reset."""


def start_aggregator(
    workdir: Path,
    vehicles: int,
    *,
    state_file: bool = True,
    variant: str | None = None,
    source: Path | None = None,
    **overrides: object,
) -> tuple[Server, dict[str, str]]:
    """The real CLI (or, with `variant`, bench/handler_variants.py around it) with a roster of `vehicles`; from
    the checkout `source` (another version, to compare) when given, else this one."""
    tokens = bench_tokens(vehicles)
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{free_port()}",
        "environment": "benchmark",
        "offline_after_s": 15,
        "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()},
    }
    if state_file:
        state = workdir / "aggregator-state.json"
        state.unlink(missing_ok=True)
        config["state_file"] = str(state)
    # The fleet plus scrapers, as operations.md says. The load generator connects every vehicle from one address
    # and at 2,000 connections a second: the pending caps meant for idle and unknown clients (100 per address,
    # 1,000 in all) would reset vehicles that a real fleet, spread over its own addresses, never loses.
    room = vehicles + CONNECTION_HEADROOM
    limits = {"max_connections": room, "max_pending_connections": room, "max_pending_connections_per_source": room}
    limits.update(overrides.pop("limits", {}))  # type: ignore[call-overload]
    config.update(overrides, limits=limits)
    path = workdir / "aggregator.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    entry = [processes.CLI_MODULE] if variant is None else ["bench.handler_variants", variant]
    command = pinned(processes.aggregator_command(path, entry=entry), SERVER_CORE)
    aggregator = processes.AggregatorProcess(command, env=bench_env(source), keep=_KEEP_LINES)
    aggregator.start(60)  # raises AggregatorStartError, a RuntimeError, with the aggregator's last output
    assert aggregator.proc is not None
    return Server("aggregator", aggregator.proc, port=aggregator.port, output=aggregator.lines), tokens


def start_pushgateway(workdir: Path, *, consistency_check: bool) -> Server:
    """Default settings (or the check off), except that its persistence file lives in `workdir`: the Debian build
    defaults to /var/lib/prometheus/pushgateway.data, which a benchmark must neither read nor leave behind."""
    port = free_port()
    data = workdir / "pushgateway.data"
    data.unlink(missing_ok=True)
    argv = [
        PUSHGATEWAY,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={data}",
        "--log.level=warn",
    ]
    if not consistency_check:
        argv.append("--push.disable-consistency-check")
    server = _spawn("pushgateway" if consistency_check else "pushgateway-nocheck", pinned(argv, SERVER_CORE))
    server.port = port
    _wait(server, lambda: _get(server.url, "/-/ready") == 200)
    return server


def start_bare() -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare_server", str(port)]
    server = _spawn("bare-aiohttp", pinned(argv, SERVER_CORE))
    server.port = port
    _wait(server, lambda: _get(server.url, "/ready") == 200)
    return server


def bench_env(source: Path | None = None) -> dict[str, str]:
    """This checkout (or `source`) first on the servers' import path (bench.* and tvm_observability)."""
    return {**os.environ, "PYTHONPATH": str(source or Path(__file__).resolve().parent.parent)}


def _spawn(name: str, argv: list[str]) -> Server:
    child = processes.ChildProcess(argv, env=bench_env(), keep=_KEEP_LINES)
    child.launch()
    assert child.proc is not None
    return Server(name, child.proc, output=child.lines)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def pushgateway_available() -> bool:
    return Path(PUSHGATEWAY).exists()
