"""Sharded, redundant aggregators for real (decision record 0005, docs/scaling.md): HAProxy with the shipped
config, 2 shards x 2 replicas with the ownership map, a real Prometheus with the shipped rules, and a fleet of
200 vehicles pushing every snapshot through both replica paths (as a bridge with `second_aggregator_url` does).
`kill -9` of one aggregator under load: no push fails on the other replica's path, no VehicleHeartbeatLost
for a live vehicle, `fleet:vehicles_online:count` exact throughout, error totals never go down; after its
restart the killed replica converges, and every vehicle's `vehicle_errors_total` in Prometheus is exact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from bridge_support import BridgeProcess, FakeVehicle, free_port, write_bridge_params
from peers import PrometheusProcess, require_binary
from support import REPO, AggregatorProcess, parse_metrics, request, wait_for, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import shards
from tvm_observability.demo.processes import stop_process
from tvm_observability.model import ROUTING_HEADER, TELEMETRY_PATH

pytestmark = [pytest.mark.peer, pytest.mark.timeout(240)]

VEHICLES = [f"veh-{i:03d}" for i in range(200)]
SHARDS = ("s1", "s2")
REPLICAS = ("a", "b")
OFFLINE_AFTER_S = 5
"""Short, so a vehicle invisible for a moment would turn offline (and alert) within the observed window."""
SHIPPED_HAPROXY = REPO / "config" / "haproxy" / "haproxy.cfg"
SHIPPED_PORTS = {"s1a": 9101, "s1b": 9102, "s2a": 9103, "s2b": 9104, "fleet_a": 9443, "fleet_b": 9444}
"""The addresses of the shipped example, replaced by free ports here."""
CODES = ("motor_stall", "lidar_timeout", "estop")


class Fleet:
    """Simulated vehicles on one event loop in a thread: each builds one snapshot a second (cumulative error
    counts, one boot) and offers it to each replica path; a path sends the latest, retrying after a failure
    (latest wins per path, a failing path never delays the other), like two bridge pushers."""

    def __init__(self, urls: dict[str, str], context: ssl.SSLContext) -> None:
        self.urls = urls
        self.context = context
        self.truth: dict[str, dict[str, int]] = {vid: {} for vid in VEHICLES}
        self.seq = dict.fromkeys(VEHICLES, 0)
        self.latest: dict[str, bytes] = {}
        self.acked: dict[tuple[str, str], int] = {}
        """(path, vehicle) -> the highest seq acknowledged on that path."""
        self.failures: dict[str, list[str]] = {path: [] for path in urls}
        self.accepted = dict.fromkeys(urls, 0)
        self.raising = True
        self._rng = random.Random(16)
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    def __enter__(self) -> Fleet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def all_acknowledged(self) -> bool:
        """Every path has acknowledged every vehicle's latest snapshot."""
        return all(self.acked.get((path, vid), -1) == self.seq[vid] for path in self.urls for vid in VEHICLES)

    def _build(self, vid: str) -> None:
        if self.raising and self._rng.random() < 0.3:
            code = self._rng.choice(CODES)
            self.truth[vid][code] = self.truth[vid].get(code, 0) + 1
        self.seq[vid] += 1
        wire = wire_snapshot(vid, boot_id="boot-1", seq=self.seq[vid], errors=dict(self.truth[vid]))
        self.latest[vid] = codec.encode_wire(wire)

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._vehicle(vid, i)) for i, vid in enumerate(VEHICLES)]
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _vehicle(self, vid: str, index: int) -> None:
        await asyncio.sleep(index / len(VEHICLES))  # spread over the second
        self._build(vid)
        senders = [asyncio.create_task(self._path(path, vid)) for path in self.urls]
        try:
            while True:
                await asyncio.sleep(1.0)
                self._build(vid)
        finally:
            for sender in senders:
                sender.cancel()
            await asyncio.gather(*senders, return_exceptions=True)

    async def _path(self, path: str, vid: str) -> None:
        """One keep-alive connection per vehicle and path, as each bridge pusher has its own."""
        connector = aiohttp.TCPConnector(ssl=self.context, limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as session:
            await self._send(session, path, vid)

    async def _send(self, session: aiohttp.ClientSession, path: str, vid: str) -> None:
        headers = {"Content-Type": codec.CONTENT_TYPE, ROUTING_HEADER: vid}
        while True:
            seq, body = self.seq[vid], self.latest[vid]
            if self.acked.get((path, vid), -1) == seq:
                await asyncio.sleep(0.1)
                continue
            try:
                async with session.post(self.urls[path] + TELEMETRY_PATH, data=body, headers=headers) as response:
                    status = response.status
                    await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            if status == 200:
                self.accepted[path] += 1
                self.acked[(path, vid)] = max(seq, self.acked.get((path, vid), -1))
            else:
                self.failures[path].append(vid)
                await asyncio.sleep(0.5)  # retried with the latest snapshot


def _haproxy_config(workdir: Path, ports: dict[str, int], pem: Path, map_file: Path) -> Path:
    """The shipped haproxy.cfg with this test's ports, certificate and map (and no syslog)."""
    text = SHIPPED_HAPROXY.read_text(encoding="utf-8")
    for name, shipped in SHIPPED_PORTS.items():
        assert text.count(f"127.0.0.1:{shipped}") >= 1, name
        text = text.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{ports[name]}")
    text = text.replace("/etc/haproxy/tvm/fleet.pem", str(pem))
    text = text.replace("/etc/tvm-observability/vehicle-shards.map", str(map_file))
    text = text.replace("    log /dev/log local0\n", "")
    path = workdir / "haproxy.cfg"
    path.write_text(text, encoding="utf-8")
    return path


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _aggregator_config(workdir: Path, name: str, shard: str, port: int, map_file: Path) -> Path:
    path = workdir / f"aggregator-{name}.yaml"
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "auth_required": False,
        "environment": "test",
        "offline_after_s": OFFLINE_AFTER_S,
        "state_file": str(workdir / f"state-{name}.msgpack"),
        "state_flush_interval_s": 0.5,
        "vehicles": dict.fromkeys(VEHICLES),
        "shard": {"name": shard, "map_file": str(map_file)},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _errors_by_vehicle(prometheus: PrometheusProcess) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {vid: {} for vid in VEHICLES}
    for item in prometheus.query("max by (vehicle_id, error_code) (vehicle_errors_total)"):
        labels = item["metric"]
        totals[labels["vehicle_id"]][labels["error_code"]] = int(float(item["value"][1]))
    return {vid: {code: n for code, n in counts.items() if n} for vid, counts in totals.items()}


def _value(prometheus: PrometheusProcess, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else None


class Deployment:
    """Everything of a sharded deployment on loopback: the map, one aggregator per shard replica, HAProxy with the
    shipped config (master-worker, so a reload re-reads config and map), Prometheus with the shipped rules."""

    def __init__(self, workdir: Path, shard_names: tuple[str, ...]) -> None:
        self.workdir = workdir
        self.haproxy_binary = require_binary("haproxy")
        self.shard_map = shards.assign(VEHICLES, shard_names)
        self.map_file = workdir / "vehicle-shards.map"
        self.map_file.write_text(shards.render(self.shard_map), encoding="utf-8")
        self.ports = {name: free_port() for name in SHIPPED_PORTS}
        ca = trustme.CA()
        self.pem = workdir / "fleet.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(self.pem)
        self.ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(self.ca_file)
        self.context = ssl.create_default_context()
        ca.configure_trust(self.context)
        self.configs: dict[str, Path] = {}
        self.aggregators: dict[str, AggregatorProcess] = {}
        self.prometheus = PrometheusProcess(
            require_binary("prometheus"),
            workdir / "prometheus",
            target="x",
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        self.haproxy_config = _haproxy_config(workdir, self.ports, self.pem, self.map_file)
        self.haproxy: subprocess.Popen[str] | None = None
        for shard in shard_names:
            self._start_shard(shard)

    def names(self, shard: str) -> list[str]:
        return [f"{shard}{replica}" for replica in REPLICAS]

    def _start_shard(self, shard: str) -> None:
        for name in self.names(shard):
            self.ports.setdefault(name, free_port())
            self.configs[name] = _aggregator_config(self.workdir, name, shard, self.ports[name], self.map_file)
            self.aggregators[name] = AggregatorProcess(self.configs[name], listen=f"127.0.0.1:{self.ports[name]}")
            self.aggregators[name].start()
        self._write_prometheus_targets()

    def _write_prometheus_targets(self) -> None:
        path = self.workdir / "prometheus" / "config" / "prometheus.yml"
        setup = yaml.safe_load(path.read_text(encoding="utf-8"))
        setup["scrape_configs"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{self.ports[n]}" for n in self.names(shard)], "labels": {"shard": shard}}
            for shard in self.shard_map.shards
        ]
        path.write_text(yaml.safe_dump(setup), encoding="utf-8")

    def restart(self, name: str) -> None:
        self.aggregators[name] = AggregatorProcess(self.configs[name], listen=f"127.0.0.1:{self.ports[name]}").start()

    def add_shard(self, shard: str) -> list[str]:
        """The documented steps: a new map, the new shard's aggregators, HAProxy reloaded, the others reloaded
        (SIGHUP); Prometheus gets the new targets. Returns the vehicles that moved."""
        before = self.shard_map
        self.shard_map = shards.assign(VEHICLES, (*before.shards, shard))
        self.map_file.write_text(shards.render(self.shard_map), encoding="utf-8")
        self._start_shard(shard)
        text = self.haproxy_config.read_text(encoding="utf-8")
        for replica in REPLICAS:
            port = self.ports[f"{shard}{replica}"]
            backend = f"{shard}_{replica}"
            text += (
                f"\nbackend {backend}\n    option httpchk GET /readyz?for=balancer\n    http-check expect status 200\n"
                f"    server {shard}{replica} 127.0.0.1:{port} check\n"
            )
        self.haproxy_config.write_text(text, encoding="utf-8")
        self._check_haproxy()
        assert self.haproxy is not None
        self.haproxy.send_signal(signal.SIGUSR2)  # master-worker reload: new config and map, listeners kept
        for name, aggregator in self.aggregators.items():
            if not name.startswith(shard):
                assert aggregator.proc is not None
                aggregator.proc.send_signal(signal.SIGHUP)
        assert self.prometheus.proc is not None
        self.prometheus.proc.send_signal(signal.SIGHUP)
        return shards.moved(before, self.shard_map)

    def _check_haproxy(self) -> None:
        check = subprocess.run(
            [self.haproxy_binary, "-c", "-f", str(self.haproxy_config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr

    def __enter__(self) -> Deployment:
        self._check_haproxy()
        self.haproxy = subprocess.Popen(
            [self.haproxy_binary, "-W", "-db", "-f", str(self.haproxy_config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in (self.ports["fleet_a"], self.ports["fleet_b"]):
            wait_for(lambda port=port: _accepts(port), 30, what=f"haproxy on {port}")
        self.prometheus.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.prometheus.__exit__()
        if self.haproxy is not None:
            stop_process(self.haproxy, signal.SIGTERM)
        for aggregator in self.aggregators.values():
            with contextlib.suppress(Exception):
                aggregator.stop()

    def fleet(self) -> Fleet:
        return Fleet({p: f"https://127.0.0.1:{self.ports[p]}" for p in ("fleet_a", "fleet_b")}, self.context)

    def exported(self, name: str) -> set[str]:
        samples = parse_metrics(request(self.aggregators[name].url + "/metrics").body.decode())
        return {dict(labels)["vehicle_id"] for metric, labels in samples if metric == "vehicle_up"}

    def watch(self, seconds: float) -> tuple[list[float | None], list[float | None], list[Any]]:
        """Poll Prometheus for `seconds`: the fleet's online count, its error total, any loss alert."""
        online, errors, lost = [], [], []
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            online.append(_value(self.prometheus, "fleet:vehicles_online:count"))
            errors.append(_value(self.prometheus, "sum(max by (vehicle_id, error_code) (vehicle_errors_total))"))
            lost += self.prometheus.query('ALERTS{alertname=~"VehicleHeartbeatLost|VehicleOffline"}')
            time.sleep(0.5)
        return online, errors, lost


def _never_reset(errors: list[float | None]) -> bool:
    """The replica left has every push but those in flight when the other died, so the total may dip by about a
    second's events (below 5 % here) and then goes on from there: never a reset."""
    values = [e or 0.0 for e in errors]
    return all(later >= 0.95 * max(values[: i + 1]) for i, later in enumerate(values)) and values[-1] > values[0]


def test_kill_one_aggregator_of_two_shards_under_load(tmp_path: Path) -> None:
    total = len(VEHICLES)
    with Deployment(tmp_path, SHARDS) as deployment, deployment.fleet() as fleet:
        prometheus = deployment.prometheus
        wait_for(lambda: _value(prometheus, "fleet:vehicles_online:count") == total, 60, what="fleet online")
        for name in deployment.aggregators:  # each aggregator exports exactly the vehicles its shard owns
            assert deployment.exported(name) == deployment.shard_map.owned_by(name[:-1])
            ready = request(deployment.aggregators[name].url + "/readyz?for=balancer")
            assert ready.status == 200 and json.loads(ready.body)["shard"] == name[:-1]
        # From here on, failures count (the start, all TLS handshakes at once on 2 cores, may time some out).
        before = {path: len(failures) for path, failures in fleet.failures.items()}
        accepted_b = fleet.accepted["fleet_b"]
        deployment.aggregators["s1a"].kill()
        online, errors, lost = deployment.watch(3 * OFFLINE_AFTER_S + 5)  # past offline_after_s and evaluation
        assert set(online) == {total}, online
        assert _never_reset(errors), errors
        assert lost == []
        failed_a, failed_b = (
            fleet.failures["fleet_a"][before["fleet_a"] :],
            fleet.failures["fleet_b"][before["fleet_b"] :],
        )
        assert failed_b == []  # the other replica's path never failed
        assert fleet.accepted["fleet_b"] >= accepted_b + 2 * total
        assert set(failed_a) <= deployment.shard_map.owned_by("s1")  # only the dead replica's vehicles, retried
        assert failed_a, "the killed replica's path saw no failure"

        deployment.restart("s1a")
        fleet.raising = False
        wait_for(fleet.all_acknowledged, 60, what="both paths acknowledge every vehicle's latest snapshot")
        truth = {vid: dict(counts) for vid, counts in fleet.truth.items()}
        restarted = parse_metrics(request(deployment.aggregators["s1a"].url + "/metrics").body.decode())
        for vid in deployment.shard_map.owned_by("s1"):
            assert restarted[("vehicle_up", frozenset({("vehicle_id", vid)}))] == 1
            for code in CODES:
                key = ("vehicle_errors_total", frozenset({("vehicle_id", vid), ("error_code", code)}))
                assert restarted.get(key, 0) == truth[vid].get(code, 0), (vid, code)
        wait_for(lambda: _errors_by_vehicle(prometheus) == truth, 30, what="exact totals in Prometheus")
        assert _value(prometheus, "fleet:vehicles_online:count") == total
        assert prometheus.query('ALERTS{alertname=~"VehicleHeartbeatLost|VehicleOffline"}') == []
        print(
            f"\nsharded: {total} vehicles; after the kill path a failed (retried) {len(failed_a)} pushes of s1's "
            f"vehicles, path b none; {fleet.accepted['fleet_b']} accepted on path b; "
            f"{sum(map(sum, (c.values() for c in truth.values())))} error events exact"
        )


def test_adding_a_shard_moves_a_third_of_the_vehicles_under_load(tmp_path: Path) -> None:
    """2 shards -> 3 while the fleet pushes: about 1/3 of the vehicles move, all to the new shard, with the
    documented steps; the fleet count stays exact, no loss alert fires, and the old shards stop reporting the
    vehicles they no longer own."""
    total = len(VEHICLES)
    with Deployment(tmp_path, SHARDS) as deployment, deployment.fleet() as fleet:
        prometheus = deployment.prometheus
        wait_for(lambda: _value(prometheus, "fleet:vehicles_online:count") == total, 60, what="fleet online")
        moved = deployment.add_shard("s3")
        assert set(moved) == deployment.shard_map.owned_by("s3")
        assert total / 3 * 0.7 < len(moved) < total / 3 * 1.3
        online, errors, lost = deployment.watch(3 * OFFLINE_AFTER_S + 5)
        assert set(online) == {total}, online
        assert _never_reset(errors), errors  # a moved vehicle has one boot here: its new shard has all its counts
        assert lost == []
        for name in deployment.aggregators:  # each exports exactly its shard's vehicles once the move settled
            wait_for(
                lambda name=name: deployment.exported(name) == deployment.shard_map.owned_by(name[:-1]),
                30,
                what=f"{name} to export only its shard",
            )
        fleet.raising = False
        wait_for(fleet.all_acknowledged, 60, what="both paths acknowledge every vehicle's latest snapshot")
        truth = {vid: dict(counts) for vid, counts in fleet.truth.items()}
        wait_for(lambda: _errors_by_vehicle(prometheus) == truth, 30, what="exact totals in Prometheus")
        # HAProxy's reload closes idle keep-alive connections: a push on one fails and is retried on a new one.
        print(
            f"\nadding a shard: {len(moved)} of {total} vehicles moved to s3; pushes retried: path a "
            f"{len(fleet.failures['fleet_a'])}, path b {len(fleet.failures['fleet_b'])}"
        )


@pytest.mark.ros
def test_real_bridges_through_haproxy_survive_a_killed_replica(ros_env, tmp_path: Path) -> None:
    """Two real vehicle_bridge nodes, one per shard, each pushing over TLS through both HAProxy paths
    (`aggregator_url`, `second_aggregator_url`, `ca_file`): `kill -9` of one replica of the first's shard, two
    error events meanwhile: both vehicles stay online, their counts are exact, and the restarted replica has them."""
    vehicle = FakeVehicle()
    vehicle.bridges = 2
    try:
        with Deployment(tmp_path, SHARDS) as deployment:
            prometheus = deployment.prometheus
            ours = [min(deployment.shard_map.owned_by(shard)) for shard in SHARDS]
            bridges = []
            for vid in ours:
                params = write_bridge_params(
                    tmp_path / f"{vid}.yaml",
                    vehicle_id=vid,
                    aggregator_url=f"https://127.0.0.1:{deployment.ports['fleet_a']}",
                    second_aggregator_url=f"https://127.0.0.1:{deployment.ports['fleet_b']}",
                    ca_file=str(deployment.ca_file),
                )
                bridges.append(BridgeProcess(ros_env, params, f"__ns:=/{vid.replace('-', '_')}").start())
            try:
                ids = "|".join(ours)
                online = f'sum(max by (vehicle_id) (vehicle_up{{vehicle_id=~"{ids}"}}))'
                wait_for(lambda: _value(prometheus, online) == 2, 60, what="both bridges online in Prometheus")
                deployment.aggregators["s1a"].kill()
                for _ in range(2):
                    vehicle.error_event("camera: driver", "CAM_USB")
                # The other 198 roster vehicles never pushed: pending VehicleOffline is right for them, not for ours.
                alerts = f'ALERTS{{alertname=~"VehicleHeartbeatLost|VehicleOffline", vehicle_id=~"{ids}"}}'
                seen, lost = [], []
                until = time.monotonic() + 3 * OFFLINE_AFTER_S + 5
                while time.monotonic() < until:
                    seen.append(_value(prometheus, online))
                    lost += prometheus.query(alerts)
                    time.sleep(0.5)
                assert set(seen) == {2}, seen
                assert lost == []
                errors = 'max by (vehicle_id) (vehicle_errors_total{error_code="CAM_USB"})'
                wait_for(
                    lambda: (
                        {i["metric"]["vehicle_id"]: float(i["value"][1]) for i in prometheus.query(errors)}
                        == dict.fromkeys(ours, 2.0)
                    ),
                    30,
                    what="two events per vehicle in Prometheus",
                )
                assert prometheus.query(alerts) == []
                deployment.restart("s1a")
                key = ("vehicle_errors_total", frozenset({("vehicle_id", ours[0]), ("error_code", "CAM_USB")}))
                wait_for(
                    lambda: (
                        parse_metrics(request(deployment.aggregators["s1a"].url + "/metrics").body.decode()).get(key)
                        == 2
                    ),
                    60,
                    what="the restarted replica to have the exact count",
                )
                for bridge in bridges:
                    assert bridge.stop() == 0, bridge.output[-3000:]
            finally:
                for bridge in bridges:
                    with contextlib.suppress(Exception):
                        bridge.stop()
    finally:
        vehicle.close()
