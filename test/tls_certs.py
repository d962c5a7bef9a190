"""Throwaway certificate authorities for the TLS tests, made with `trustme` (nothing leaves tmp_path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509


@dataclass(frozen=True)
class ServerCert:
    cert_file: Path
    key_file: Path
    serial: int


class ThrowawayCA:
    """A CA made for one test: writes its certificate and issues server certificates for 127.0.0.1/localhost."""

    def __init__(self, directory: Path, name: str = "tvm test CA") -> None:
        self.directory = directory
        self.ca = trustme.CA(organization_name=name)
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / f"{_slug(name)}.pem"
        self.ca.cert_pem.write_to_path(self.ca_file)

    def issue(self, stem: str = "server") -> ServerCert:
        """A server certificate for 127.0.0.1, ::1 and localhost, with its key (mode 0600)."""
        leaf = self.ca.issue_cert("localhost", "127.0.0.1", "::1")
        cert_file = self.directory / f"{stem}.crt"
        key_file = self.directory / f"{stem}.key"
        leaf.cert_chain_pems[0].write_to_path(cert_file)
        key_file.touch(mode=0o600)
        leaf.private_key_pem.write_to_path(key_file)
        serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
        return ServerCert(cert_file, key_file, serial)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())
