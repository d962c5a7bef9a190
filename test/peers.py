"""Helpers for tests that drive Debian peer binaries: promtool, amtool, chromium, and a real Prometheus."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from support import request, wait_for

from tvm_observability import prometheus_setup


def require_binary(name: str) -> str:
    """Path of `name` on PATH, or skip the test saying which Debian package provides it."""
    path = shutil.which(name)
    if path is None:
        package = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}.get(name, name)
        pytest.skip(f"{name} not found on PATH (apt-get install {package})")
    return path


def stop_gracefully(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
    """Send `sig`, wait, and SIGKILL what does not exit in time; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


class PrometheusProcess:
    """A real Prometheus on an ephemeral loopback port with its own TSDB directory, scraping one aggregator."""

    def __init__(self, binary: str, workdir: Path, **setup: Any) -> None:
        config = prometheus_setup.write_setup(workdir / "config", **setup)
        self.args = prometheus_setup.command(binary, config, workdir / "data")
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> PrometheusProcess:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        address = wait_for(self._address, 60, what="prometheus to listen")
        if not isinstance(address, str):
            raise AssertionError("prometheus exited:\n" + "".join(self.log[-30:]))
        self.url = f"http://{address}"
        wait_for(lambda: request(self.url + "/-/ready").status == 200, 60, what="prometheus to be ready")
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

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        resp = request(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        body = json.loads(resp.body)
        assert resp.status == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or [scalar] for scalars)."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]
