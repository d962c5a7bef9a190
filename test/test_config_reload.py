"""SIGHUP reloads of a real aggregator process: a refused reload changes nothing, the TLS certificate included
(issue 10, item 1); a hostile or wrongly typed file is refused without a traceback (item 6); restart-only
keys are named, not applied (issue 9)."""

from __future__ import annotations

import http.client
import signal
import ssl
from pathlib import Path
from typing import Any

import yaml
from support import MSGPACK, AggregatorProcess, push, wait_for, wire_snapshot
from tls_certs import ThrowawayCA

from tvm_observability import codec
from tvm_observability.auth import generate_token, hash_token

RELOADED = "configuration reloaded"
REFUSED = "config reload refused; the running configuration stays"


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def messages(agg: AggregatorProcess, prefix: str) -> list[str]:
    return [r["message"] for r in list(agg.logs) if r.get("message", "").startswith(prefix)]


def sighup_and_wait(agg: AggregatorProcess, message_prefix: str) -> None:
    """Send SIGHUP and wait until one more log line starting with `message_prefix` appears."""
    before = len(messages(agg, message_prefix))
    assert agg.proc is not None
    agg.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(messages(agg, message_prefix)) > before, 30, what=message_prefix)


def handshake(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> tuple[int, int]:
    """A new TLS connection (with a server name unless `host` is an address): the serial of the server's
    certificate, and the status of a request over it."""
    from cryptography import x509

    conn = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    finally:
        conn.close()
    return x509.load_der_x509_certificate(der).serial_number, status


def https_push(port: int, context: ssl.SSLContext, wire: dict[str, Any], token: str) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        headers = {**MSGPACK, "Authorization": f"Bearer {token}"}
        conn.request("POST", "/api/v1/telemetry", codec.encode_wire(wire), headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_reload_refused_for_a_mismatched_key_changes_nothing_and_a_renewed_pair_is_served(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    first, second, third = ca.issue("first"), ca.issue("second"), ca.issue("third")
    tokens = {"V1": generate_token(), "V2": generate_token()}
    config: dict[str, Any] = {
        "environment": "test",
        "vehicles": {"V1": {"token_sha256": hash_token(tokens["V1"])}},
        "tls": {"cert_file": str(first.cert_file), "key_file": str(first.key_file)},
    }
    path = write_yaml(tmp_path / "aggregator.yaml", config)
    trusting = ssl.create_default_context(cafile=str(ca.ca_file))
    with AggregatorProcess(path) as agg:
        port = int(agg.url.rsplit(":", 1)[1])
        assert handshake(port, trusting) == (first.serial, 200)

        # The new certificate with another certificate's key, and a roster change in the same file.
        refused = {
            **config,
            "vehicles": {vid: {"token_sha256": hash_token(tok)} for vid, tok in tokens.items()},
            "tls": {"cert_file": str(second.cert_file), "key_file": str(third.key_file)},
        }
        write_yaml(path, refused)
        sighup_and_wait(agg, "config reload refused: tls: cannot load the certificate and key")
        wait_for(lambda: agg.find_log(REFUSED), 10, what="the refusal's summary line")
        for host in ("127.0.0.1", "localhost", "127.0.0.1"):  # every new handshake still gets the running one
            assert handshake(port, trusting, host) == (first.serial, 200)
        assert (
            https_push(port, trusting, wire_snapshot("V2"), tokens["V2"]) == 401
        )  # roster unchanged: not a credential
        assert https_push(port, trusting, wire_snapshot("V1"), tokens["V1"]) == 200
        assert agg.find_log(RELOADED) is None

        # A renewed pair written over the running files (same paths): new connections get it.
        first.cert_file.write_bytes(second.cert_file.read_bytes())
        first.key_file.write_bytes(second.key_file.read_bytes())
        write_yaml(path, config)
        sighup_and_wait(agg, RELOADED)
        assert handshake(port, trusting) == (second.serial, 200)
        assert handshake(port, trusting, "localhost") == (second.serial, 200)
        assert agg.stop() == 0
    assert "Traceback" not in "".join(agg.raw_stderr)


def test_hostile_and_wrongly_typed_files_are_refused_on_sighup_without_a_traceback(tmp_path: Path) -> None:
    token = generate_token()
    config: dict[str, Any] = {"environment": "test", "vehicles": {"V1": {"token_sha256": hash_token(token)}}}
    path = write_yaml(tmp_path / "aggregator.yaml", config)
    with AggregatorProcess(path) as agg:
        assert push(agg.url, wire_snapshot("V1", seq=1), token).status == 200

        path.write_text(
            "environment: test\nstatuses: [[a]]\nlog_level: {x: 1}\nvehicles: {V1: {token_sha256: [1]}}\n",
            encoding="utf-8",
        )
        sighup_and_wait(agg, REFUSED)
        problems = messages(agg, "config reload refused: ")
        for key in ("statuses:", "log_level:", "vehicles.V1.token_sha256:"):
            assert any(key in p for p in problems), (key, problems)

        levels = ['l0: &l0 ["lol"]'] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
        path.write_text("\n".join([*levels, "statuses: *l7"]) + "\n", encoding="utf-8")
        sighup_and_wait(agg, REFUSED)
        assert any("anchors and aliases" in p for p in messages(agg, "config reload refused: "))

        dup = f'vehicles:\n  V1: {{token_sha256: "{hash_token(token)}"}}\n  V1: {{token_sha256: "{"0" * 64}"}}\n'
        path.write_text(dup, encoding="utf-8")
        sighup_and_wait(agg, REFUSED)
        assert any("key 'V1' written twice" in p for p in messages(agg, "config reload refused: "))

        assert push(agg.url, wire_snapshot("V1", seq=2), token).status == 200  # the running config stayed

        # A valid file changing a restart-only key: the rest applies, the key is named.
        write_yaml(path, {**config, "limits": {"idle_timeout_s": 5, "rate_limit_burst": 3}})
        sighup_and_wait(agg, RELOADED)
        warning = agg.find_log("changed keys take effect only after a restart")
        assert warning is not None and warning["context"]["keys"] == ["limits.idle_timeout_s"]
        assert agg.stop() == 0
    logged = "".join(agg.raw_stderr)
    assert "Traceback" not in logged and "Exception in callback" not in logged
    assert len(logged) < 100_000
