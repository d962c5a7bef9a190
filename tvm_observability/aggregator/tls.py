"""The server's TLS contexts: the listening one never changes; a reload swaps in a complete new one.

The listening socket keeps the context it was created with. Its `sni_callback`, run at every ClientHello
(with or without a server name), hands the connection the context in force. A reload builds a whole new
context from the files first; only one that loaded completely is put in force, so a refused reload changes
nothing and a half-loaded context never serves a handshake.
"""

from __future__ import annotations

import ssl

from .config import TlsConfig


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context with the configured chain: TLS 1.2 or newer, the ssl module's default ciphers.

    Raises ssl.SSLError or OSError when the files do not load as a pair."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key is refused, not prompted for: without a password callback OpenSSL asks on the terminal.
    context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    return context


def _no_password() -> bytes:
    raise ssl.SSLError("the private key is encrypted; give the service an unencrypted key (mode 0600)")


class ServerTls:
    """The context to listen with, and the one each new connection gets."""

    def __init__(self, tls: TlsConfig) -> None:
        self.listening = server_context(tls)
        self.current = self.listening
        self.listening.sni_callback = self._hand_over

    def _hand_over(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            connection.context = current

    def use(self, context: ssl.SSLContext) -> None:
        """Put a context built by `server_context` in force for every new connection."""
        self.current = context
