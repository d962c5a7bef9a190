"""Security of the aggregator with real processes: TLS with a throwaway CA, read auth on /metrics, tokens never
logged, token rotation and roster changes on SIGHUP, and a flooding vehicle that cannot starve the others."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import signal
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support import (
    MSGPACK,
    AggregatorProcess,
    Response,
    parse_metrics,
    push,
    request,
    sample,
    scrape,
    wait_for,
    wire_snapshot,
)
from tls_certs import ThrowawayCA

from tvm_observability import codec
from tvm_observability.auth import generate_token, hash_token


def https_request(
    url: str, context: ssl.SSLContext, method: str = "GET", body: bytes | None = None, headers: Mapping[str, str] = {}
) -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
    try:
        conn.request(method, parts.path or "/", body=body, headers=dict(headers))
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def peer_serial(url: str, context: ssl.SSLContext) -> int:
    """The serial number of the certificate the server presents on a new connection."""
    from cryptography import x509

    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    finally:
        conn.close()
    return x509.load_der_x509_certificate(der).serial_number


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def roster_of(tokens: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()}


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_with_a_throwaway_ca_and_certificate_rotation_on_sighup(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    first = ca.issue("server-1")
    token = generate_token()
    config = {
        "listen": "127.0.0.1:0",
        "environment": "test",
        "vehicles": roster_of({"V1": token}),
        "tls": {"cert_file": str(first.cert_file), "key_file": str(first.key_file)},
    }
    path = write_yaml(tmp_path / "aggregator.yaml", config)
    with AggregatorProcess(path) as agg:
        assert agg.find_log("listening")["context"]["scheme"] == "https"
        url = agg.url.replace("http://", "https://")
        trusting = ssl.create_default_context(cafile=str(ca.ca_file))
        headers = {**MSGPACK, "Authorization": f"Bearer {token}"}
        resp = https_request(url + "/api/v1/telemetry", trusting, "POST", codec.encode_wire(wire_snapshot()), headers)
        assert resp.status == 200, resp.body
        metrics = https_request(url + "/metrics", trusting)
        assert sample(parse_metrics(metrics.body.decode()), "vehicle_up", vehicle_id="V1") == 1

        # A client that does not trust the CA refuses the server; plain HTTP gets no telemetry answer.
        with pytest.raises(ssl.SSLCertVerificationError):
            https_request(url + "/healthz", ssl.create_default_context())
        with pytest.raises((OSError, http.client.HTTPException)):
            request(agg.url + "/healthz")
        assert peer_serial(url, trusting) == first.serial

        second = ca.issue("server-2")
        config["tls"] = {"cert_file": str(second.cert_file), "key_file": str(second.key_file)}
        write_yaml(path, config)
        agg.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: agg.find_log("configuration reloaded"), 10)
        assert peer_serial(url, trusting) == second.serial  # new connections get the new certificate


def test_tls_key_that_does_not_load_is_refused_at_start(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    cert = ca.issue()
    other = ca.issue("other")
    path = write_yaml(
        tmp_path / "aggregator.yaml",
        {"auth_required": False, "tls": {"cert_file": str(cert.cert_file), "key_file": str(other.key_file)}},
    )
    agg = AggregatorProcess(path)
    with pytest.raises(AssertionError, match="exited with 2"):
        agg.start(timeout=20)
    assert "cannot load the certificate and key" in "".join(agg.raw_stderr)


# -- read auth ---------------------------------------------------------------------------------


def test_read_auth_guards_metrics_with_bearer_or_basic(tmp_path: Path) -> None:
    scrape_token, password = generate_token(), "correct horse battery staple"
    vehicle_token = generate_token()
    path = write_yaml(
        tmp_path / "aggregator.yaml",
        {
            "listen": "127.0.0.1:0",
            "environment": "test",
            "vehicles": roster_of({"V1": vehicle_token}),
            "read_auth": {
                "bearer_token_sha256": hash_token(scrape_token),
                "basic_username": "prometheus",
                "basic_password_sha256": hashlib.sha256(password.encode()).hexdigest(),
            },
        },
    )
    basic = "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()
    wrong_basic = "Basic " + base64.b64encode(b"prometheus:guess").decode()
    with AggregatorProcess(path) as agg:
        refused = request(agg.url + "/metrics")
        assert refused.status == 401
        assert "Bearer" in refused.headers["www-authenticate"] and "Basic" in refused.headers["www-authenticate"]
        for bad in (wrong_basic, "Bearer nope", f"Bearer {vehicle_token}", "Basic !!!", "Digest x"):
            assert request(agg.url + "/metrics", headers={"Authorization": bad}).status == 401, bad
        for good in (f"Bearer {scrape_token}", basic):
            resp = request(agg.url + "/metrics", headers={"Authorization": good})
            assert resp.status == 200
            parse_metrics(resp.body.decode())
        for page in ("/", "/api/v1/vehicles"):  # the status page and its JSON carry the same fleet data
            assert request(agg.url + page).status == 401
            assert request(agg.url + page, headers={"Authorization": basic}).status == 200
        assert request(agg.url + "/healthz").status == 200  # probes stay open
        assert request(agg.url + "/readyz").status == 200
        assert push(agg.url, wire_snapshot(), vehicle_token).status == 200  # ingest has its own credentials
        counted = parse_metrics(request(agg.url + "/metrics", headers={"Authorization": basic}).body.decode())
        assert sample(counted, "http_requests_total", method="GET", endpoint="/metrics", status="401") == 6
        logged = "".join(agg.raw_stderr)
    for secret in (scrape_token, password, vehicle_token, base64.b64encode(f"prometheus:{password}".encode()).decode()):
        assert secret not in logged


def test_metrics_open_without_read_auth(write_config) -> None:
    with AggregatorProcess(write_config({"V1": generate_token()})) as agg:
        assert request(agg.url + "/metrics").status == 200


# -- tokens: never logged, rotated and revoked on SIGHUP ---------------------------------------


def test_sighup_rotates_tokens_changes_the_roster_and_refuses_a_bad_config(tmp_path: Path) -> None:
    tokens = {"V1": generate_token(), "V2": generate_token()}
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "environment": "test",
        "log_level": "debug",
        "vehicles": roster_of(tokens),
    }
    path = write_yaml(tmp_path / "aggregator.yaml", config)
    with AggregatorProcess(path) as agg:
        assert push(agg.url, wire_snapshot("V1", seq=1), tokens["V1"]).status == 200
        assert push(agg.url, wire_snapshot("V2", seq=1), tokens["V2"]).status == 200

        rotated = {"V1": generate_token(), "V3": generate_token()}
        config["vehicles"] = roster_of(rotated)  # V1 rotated, V2 retired, V3 new
        write_yaml(path, config)
        agg.proc.send_signal(signal.SIGHUP)
        reloaded = wait_for(lambda: agg.find_log("configuration reloaded"), 10)["context"]
        assert reloaded["added"] == ["V3"] and reloaded["dropped"] == ["V2"] and reloaded["tokens_rotated"] == ["V1"]

        assert push(agg.url, wire_snapshot("V1", seq=2), tokens["V1"]).status == 401  # the old token is revoked
        assert push(agg.url, wire_snapshot("V1", seq=3), rotated["V1"]).status == 200
        assert push(agg.url, wire_snapshot("V3", seq=1), rotated["V3"]).status == 200
        assert push(agg.url, wire_snapshot("V2", seq=2), tokens["V2"]).status == 401  # a retired token is no credential
        samples = scrape(agg.url)
        assert sample(samples, "vehicle_on_roster", vehicle_id="V3") == 1
        assert sample(samples, "vehicle_on_roster", vehicle_id="V2") is None
        assert sample(samples, "vehicles_total") == 2

        # A broken file: every problem is logged, and the running configuration stays in force.
        path.write_text(
            yaml.safe_dump({**config, "surprise": 1, "vehicles": {"V1": {"token_sha256": "not-hex"}}}),
            encoding="utf-8",
        )
        agg.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: agg.find_log("config reload refused; the running configuration stays"), 10)
        problems = [r["message"] for r in agg.logs if r["message"].startswith("config reload refused: ")]
        assert any("surprise: unknown key" in p for p in problems)
        assert any("vehicles.V1.token_sha256" in p for p in problems)
        assert push(agg.url, wire_snapshot("V3", seq=2), rotated["V3"]).status == 200
        assert push(agg.url, wire_snapshot("V1", seq=4), rotated["V1"]).status == 200
        assert agg.stop() == 0
    logged = "".join(agg.raw_stderr)
    assert "configuration reloaded" in logged and "config reload refused" in logged  # the log searched is the real one
    for token in (*tokens.values(), *rotated.values()):
        assert token not in logged
    assert "Bearer " not in logged


# -- rate limit ----------------------------------------------------------------------------------


def test_a_flooding_vehicle_cannot_starve_the_others(write_config) -> None:
    """One broken bridge floods from four connections; three healthy ones at 5 Hz get every push through."""
    tokens = {vid: generate_token() for vid in ("V0", "V1", "V2", "V3")}
    with AggregatorProcess(write_config(tokens)) as agg:  # default limit: 10/s per vehicle, burst 20
        parts = urlsplit(agg.url)
        stop = threading.Event()
        flood_statuses: list[int] = []

        def flood() -> None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            headers = {**MSGPACK, "Authorization": f"Bearer {tokens['V0']}"}
            seq = 0
            while not stop.is_set():
                seq += 1
                conn.request("POST", "/api/v1/telemetry", codec.encode_wire(wire_snapshot("V0", seq=seq)), headers)
                resp = conn.getresponse()
                resp.read()
                flood_statuses.append(resp.status)
            conn.close()

        healthy: dict[str, list[int]] = {vid: [] for vid in ("V1", "V2", "V3")}

        def vehicle(vid: str) -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                healthy[vid].append(push(agg.url, wire_snapshot(vid, seq=seq), tokens[vid]).status)
                stop.wait(0.2)

        threads = [threading.Thread(target=flood) for _ in range(4)]
        threads += [threading.Thread(target=vehicle, args=(vid,)) for vid in healthy]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(5)
        stop.set()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        samples = scrape(agg.url)

    accepted = flood_statuses.count(200)
    limited = flood_statuses.count(429)
    print(
        f"\nflood: {len(flood_statuses) / elapsed:.0f} pushes/s, {accepted} accepted, {limited} rate-limited; "
        f"healthy vehicles: {sum(map(len, healthy.values()))} pushes, all 200: "
        f"{all(s == 200 for v in healthy.values() for s in v)}"
    )
    assert set(flood_statuses) <= {200, 429}
    assert limited > 10 * accepted  # the flood was mostly refused
    assert accepted <= 20 + 10 * elapsed + 10  # burst + rate x time (+ one second of slack)
    assert sample(samples, "telemetry_snapshots_rejected_total", reason="rate_limited") == limited
    for vid, statuses in healthy.items():
        assert len(statuses) >= 10, vid
        assert set(statuses) == {200}, (vid, statuses)


def test_listening_beyond_loopback_warns_about_plain_http_and_open_metrics(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    cert = ca.issue()
    base = {"environment": "test", "vehicles": roster_of({"V1": generate_token()})}
    exposed = write_yaml(tmp_path / "exposed.yaml", base)
    with AggregatorProcess(exposed, listen="0.0.0.0:0") as agg:
        warnings = wait_for(lambda: [r["message"] for r in agg.logs if r["level"] == "WARNING"][1:] and agg.logs, 10)
        warnings = [r["message"] for r in warnings if r["level"] == "WARNING"]
    assert any(m.startswith("listening beyond loopback without TLS") for m in warnings), warnings
    assert any(m.startswith("listening beyond loopback without read_auth") for m in warnings), warnings

    hardened = write_yaml(
        tmp_path / "hardened.yaml",
        {
            **base,
            "tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
            "read_auth": {"bearer_token_sha256": hash_token(generate_token())},
        },
    )
    with AggregatorProcess(hardened, listen="0.0.0.0:0") as agg:
        # Served a request: the start-up code, warnings included, has run; give the log reader a moment.
        trusting = ssl.create_default_context(cafile=str(ca.ca_file))
        port = urlsplit(agg.url).port
        assert https_request(f"https://127.0.0.1:{port}/healthz", trusting).status == 200
        time.sleep(0.5)
        assert not [r for r in agg.logs if r["level"] == "WARNING"]


# -- no token in any log, from any layer (issue 10 item 11) -------------------------------------------


def raw_exchange(url: str, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send raw bytes from the loopback address `source` and return the answer's first bytes (b"" if none)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
        return answer


def test_no_token_reaches_the_log_from_malformed_authorization_lines(tmp_path: Path) -> None:
    """aiohttp's parser logs an ERROR traceback quoting the raw header line it refuses: with a valid token in
    that line, the token was in the log. Each malformed request comes from its own loopback address, so that
    the per-client log rate lets every one of them through to the log, where it must arrive scrubbed."""
    token, reader = generate_token(), generate_token()
    config = {
        "listen": "127.0.0.1:0",
        "environment": "test",
        "log_level": "debug",
        "vehicles": roster_of({"V1": token}),
        "read_auth": {"bearer_token_sha256": hash_token(reader)},
    }
    path = write_yaml(tmp_path / "aggregator.yaml", config)
    body = codec.encode_wire(wire_snapshot("V1"))
    lines: list[bytes] = []
    for secret in (token.encode(), reader.encode()):
        lines += [
            b"Authorization: Bearer " + secret + b"\x01",
            b"Authorization: Bearer " + secret + b"\x7f",
            b"Authorization: Bearer " + secret + b"\x00tail",
            b"Authorization: Bearer " + secret + b"x" * 9000,  # longer than the header line limit
            b"Authorization:\x01Bearer " + secret,
            b"Authorization: " + secret + b"\x01",  # no scheme
            b"Authori\x01zation: Bearer " + secret,
            b"X-Anything: " + secret + b"\x01",  # the token in an unrelated header
            b"Authorization: Basic " + base64.b64encode(b"prometheus:" + secret) + b"\x01",
            # a separator other than a space after the scheme: quoted as a literal \t, \xa0 in the traceback
            b"Authorization: Bearer\t" + secret + b" " * 9000,
            b"Authorization: Bearer\xa0" + secret + b"\x01",
            b"Authorizatio\x01n: Bearer\t" + secret,
            b"Authorization: Basic\t" + base64.b64encode(b"prometheus:" + secret) + b" " * 9000,
        ]
    with AggregatorProcess(path) as agg:
        for index, line in enumerate(lines):
            request_path = b"/api/v1/telemetry" if index % 2 == 0 else b"/metrics"
            head = b"POST " + request_path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            head += line + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            answer = raw_exchange(agg.url, head + body, source=f"127.0.0.{index + 2}")
            assert answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:80]
        errors = wait_for(
            lambda: len([r for r in agg.logs if r["message"].startswith("Error handling request")]) >= len(lines),
            20,
            what="one parser error logged per malformed request",
        )
        assert errors
        assert agg.stop() == 0
    logged = "".join(agg.raw_stderr)
    assert token not in logged and reader not in logged
    assert logged.count("[redacted]") >= len(lines)
