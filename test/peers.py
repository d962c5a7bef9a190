"""Helpers for tests that drive Debian peer binaries: promtool, amtool, chromium, and a real Prometheus."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from support import REPO, request, wait_for

from tvm_observability.demo import prometheus_setup

PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "chromium": "chromium",
    "systemd-analyze": "systemd",
}
"""The Debian package that provides each peer binary the tests drive (.ci/run installs these packages)."""


def in_ci() -> bool:
    """True when the CI variable is set (CI runs `CI=true bash .ci/run`): there, a missing peer is a failure."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_binary(name: str) -> str:
    """Path of `name` on PATH. Missing: under CI the test fails (a green run must have run it), elsewhere it
    is skipped; either way the message names the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH (apt-get install {PACKAGES.get(name, name)})"
        if in_ci():
            pytest.fail(f"{message}; CI must run every peer test", pytrace=False)
        pytest.skip(message)
    return path


def has_binary(name: str) -> bool:
    """For a test that runs with or without an optional peer (the demo's Prometheus): whether `name` is on PATH.
    Under CI it must be, so CI always runs the variant with the peer."""
    if in_ci():
        require_binary(name)
        return True
    return shutil.which(name) is not None


def stop_gracefully(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
    """Send `sig`, wait, and SIGKILL what does not exit in time; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


_Peer = TypeVar("_Peer", bound="PeerServer")


class PeerServer:
    """A Debian peer server (Prometheus, Alertmanager) on an ephemeral loopback port; stderr collected.

    Both log `msg="Listening on" address=host:port` with the port they bound, which is how port 0 is resolved.
    """

    name = "peer"

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self: _Peer) -> _Peer:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        address = wait_for(self._address, 60, what=f"{self.name} to listen")
        if not isinstance(address, str):
            raise AssertionError(f"{self.name} exited:\n" + "".join(self.log[-30:]))
        self.url = f"http://{address}"
        wait_for(lambda: request(self.url + "/-/ready").status == 200, 60, what=f"{self.name} to be ready")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_gracefully(self.proc, signal.SIGTERM)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)

    def _address(self) -> str | bool | None:
        if self.proc is not None and self.proc.poll() is not None:
            return True  # exited: wait_for returns, __enter__ reports the log
        return next(filter(None, map(prometheus_setup.listening_address, list(self.log))), None)

    def get_json(self, path: str) -> Any:
        resp = request(self.url + path)
        assert resp.status == 200, resp.body
        return json.loads(resp.body)


class PrometheusProcess(PeerServer):
    """A real Prometheus with its own TSDB directory, set up from the shipped config (prometheus_setup)."""

    name = "prometheus"

    def __init__(self, binary: str, workdir: Path, **setup: Any) -> None:
        config = prometheus_setup.write_setup(workdir / "config", **setup)
        super().__init__(prometheus_setup.command(binary, config, workdir / "data"))

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        body = self.get_json(f"/api/v1/{path}" + (f"?{query}" if query else ""))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or [scalar] for scalars)."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]


class AlertmanagerProcess(PeerServer):
    """A real Alertmanager running the shipped config/alertmanager/alertmanager.yml, with its two example
    webhook receivers pointed at `webhook_base` (/pager, /chat) and clustering off (no extra listener)."""

    name = "alertmanager"

    def __init__(self, binary: str, workdir: Path, webhook_base: str) -> None:
        config = yaml.safe_load((REPO / "config" / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8"))
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = webhook_base + urllib.parse.urlsplit(hook["url"]).path
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        super().__init__(
            [
                binary,
                f"--config.file={path}",
                f"--storage.path={workdir / 'data'}",
                "--web.listen-address=127.0.0.1:0",
                "--cluster.listen-address=",
            ]
        )

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        body = json.dumps(alerts).encode()
        resp = request(self.url + "/api/v2/alerts", "POST", body, {"Content-Type": "application/json"})
        assert resp.status == 200, resp.body


class WebhookReceiver:
    """A loopback HTTP server recording every Alertmanager webhook notification, by path."""

    def __init__(self) -> None:
        received: dict[str, list[dict[str, Any]]] = {}
        self.received = received
        """Notifications by path, each with the wall time it arrived under `received_at`."""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                note = json.loads(self.rfile.read(length))
                note["received_at"] = time.time()
                received.setdefault(self.path, []).append(note)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def firing(self, path: str) -> set[tuple[str, str]]:
        """(alertname, vehicle_id) of every firing alert notified to `path` so far."""
        return {
            (a["labels"]["alertname"], a["labels"].get("vehicle_id", ""))
            for note in list(self.received.get(path, []))
            for a in note["alerts"]
            if a["status"] == "firing"
        }

    def first_time(self, path: str, keys: set[tuple[str, str]]) -> float | None:
        """Wall time of the first notification to `path` with a firing alert among `keys`."""
        times = [
            note["received_at"]
            for note in list(self.received.get(path, []))
            for a in note["alerts"]
            if a["status"] == "firing" and (a["labels"]["alertname"], a["labels"].get("vehicle_id", "")) in keys
        ]
        return min(times, default=None)
