"""Helpers for tests that drive Debian peer binaries: promtool, amtool, chromium, a real Prometheus, Alertmanager
and VictoriaMetrics."""

from __future__ import annotations

import asyncio
import http.server
import importlib
import itertools
import json
import os
import shutil
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from bridge_support import free_port
from support import REPO, request, wait_for

from tvm_observability.demo import prometheus_setup
from tvm_observability.demo.processes import ChildProcess

PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "chromium": "chromium",
    "systemd-analyze": "systemd",
    "haproxy": "haproxy",
    "victoria-metrics": "victoria-metrics",
}
"""The Debian package that provides each peer binary the tests drive (.ci/run installs these packages)."""


ROS_INSTALL = "source ROS 2, or pip install -r requirements-ros-kilted.txt"
"""How rclpy gets into a venv without a ROS installation."""


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


def require_module(name: str, install: str) -> ModuleType:
    """The module `name`; missing: under CI the test fails, elsewhere it is skipped (install: how to get it)."""
    if in_ci():
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"{name} cannot be imported ({exc}; {install}); CI must run every test that needs it")
    return pytest.importorskip(name, reason=f"{name} is not installed ({install})")


def has_binary(name: str) -> bool:
    """For a test that runs with or without an optional peer (the demo's Prometheus): whether `name` is on PATH.
    Under CI it must be, so CI always runs the variant with the peer."""
    if in_ci():
        require_binary(name)
        return True
    return shutil.which(name) is not None


_Peer = TypeVar("_Peer", bound="PeerServer")


class PeerProcess(ChildProcess):
    """A peer process started for a test: its output collected, stopped with SIGTERM (then SIGKILL) on exit."""

    name = "peer"
    start_timeout_s = 60.0

    def __init__(self, args: list[str]) -> None:
        super().__init__(args)

    def _launch(self, find: Callable[[str], str | None]) -> str:
        """Start; return the first `find(line)` value of its output (an address it announces)."""
        self.launch()
        value = self.wait_until(lambda: next(filter(None, map(find, self.lines)), None), self.start_timeout_s)
        if value is None:
            state = "exited" if self.ended else f"did not start within {self.start_timeout_s:g} s"
            raise AssertionError(f"{self.name} {state}:\n" + self.tail(30))
        return value

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.stop(signal.SIGTERM)


class PeerServer(PeerProcess):
    """A Debian peer server (Prometheus, Alertmanager) on an ephemeral loopback port; stderr collected.

    Both log `msg="Listening on" address=host:port` with the port they bound, which is how port 0 is resolved.
    """

    def __init__(self, args: list[str]) -> None:
        super().__init__(args)
        self.url = ""

    def __enter__(self: _Peer) -> _Peer:
        self.url = f"http://{self._launch(prometheus_setup.listening_address)}"
        wait_for(lambda: request(self.url + "/-/ready").status == 200, 60, what=f"{self.name} to be ready")
        return self

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


class VictoriaMetricsProcess(PeerProcess):
    """A real single-node VictoriaMetrics (Debian package `victoria-metrics`) with its data directory in `workdir`,
    on a free loopback port (it does not resolve port 0): a remote-write receiver on `/api/v1/write` with
    Prometheus's query API. `flags` are further command-line flags (`-retentionPeriod=...`)."""

    name = "victoria-metrics"

    def __init__(self, binary: str, workdir: Path, *flags: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        address = self.url.removeprefix("http://")
        super().__init__([binary, f"-storageDataPath={workdir / 'vm-data'}", f"-httpListenAddr={address}", *flags])
        self._announced = f"starting http server at {self.url}/"

    def __enter__(self) -> VictoriaMetricsProcess:
        self._launch(lambda line: self.url if self._announced in line else None)
        wait_for(lambda: request(self.url + "/health").status == 200, 60, what="victoria-metrics to be healthy")
        return self

    def export(self, match: str, start: float, end: float) -> list[dict[str, Any]]:
        """`/api/v1/export`: the raw samples (no step, no lookback) of every series matching `match` between
        `start` and `end` (seconds), one {"metric", "values", "timestamps" (ms)} per series."""
        query = urllib.parse.urlencode({"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        resp = request(f"{self.url}/api/v1/export?{query}")
        assert resp.status == 200, resp.body
        return [json.loads(line) for line in resp.body.decode().splitlines() if line.strip()]

    def api(self, path: str, **params: str) -> Any:
        """A Prometheus query API call (`query_range`, `series`, ...): its `data`."""
        resp = request(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert resp.status == 200, resp.body
        body = json.loads(resp.body)
        assert body["status"] == "success", body
        return body["data"]


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


def chromium_command(binary: str, profile: Path) -> list[str]:
    """Headless Chromium with its own profile directory, quiet: no sandbox (containers), no GPU, no network
    of its own (updates, sync, QUIC)."""
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


class HeadlessChromium(PeerProcess):
    """A real headless Chromium driven over the DevTools protocol (aiohttp's websocket client): `evaluate`
    loads `url` and runs an expression in it, so a test can read the layout the browser computed (element
    positions, computed styles), which --dump-dom cannot show. DevTools runs it whatever the page's CSP."""

    def __init__(self, binary: str, profile: Path, url: str, width: int, height: int) -> None:
        super().__init__(
            [
                *chromium_command(binary, profile),
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ]
        )
        self.url = url
        self.devtools = ""

    def __enter__(self) -> HeadlessChromium:
        self.devtools = self._launch(_devtools_address)
        return self

    def _page_socket(self) -> str | None:
        pages = json.loads(request(f"http://{self.devtools}/json/list").body)
        return next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """Load the page (waiting for its load event) and return the value of `expression` in it."""
        socket_url = wait_for(self._page_socket, timeout, what="chromium's page target")
        return asyncio.run(asyncio.wait_for(self._load_and_evaluate(socket_url, expression), timeout))

    async def _load_and_evaluate(self, socket_url: str, expression: str) -> Any:
        async with aiohttp.ClientSession() as session, session.ws_connect(socket_url, max_msg_size=0) as ws:
            ids = itertools.count(1)

            async def until(wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
                while True:
                    message: dict[str, Any] = await ws.receive_json()
                    if wanted(message):
                        return message

            async def call(method: str, **params: Any) -> Any:
                call_id = next(ids)
                await ws.send_json({"id": call_id, "method": method, "params": params})
                message = await until(lambda m: m.get("id") == call_id)
                assert "error" not in message, message
                return message["result"]

            await call("Page.enable")
            await call("Page.navigate", url=self.url)
            await until(lambda m: m.get("method") == "Page.loadEventFired")
            result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            assert "exceptionDetails" not in result, result
            return result["result"].get("value")


def _devtools_address(line: str) -> str | None:
    """host:port from Chromium's `DevTools listening on ws://host:port/devtools/browser/<id>` line."""
    return line.split("ws://", 1)[1].split("/", 1)[0] if line.startswith("DevTools listening on ws://") else None
