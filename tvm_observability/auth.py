"""Per-vehicle bearer credentials: only SHA-256 hashes are ever stored, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
BEARER_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""RFC 6750's b64token: what a bearer token may be made of (generated tokens are URL-safe base64)."""
TOKEN_BYTES = 32


def generate_token() -> str:
    """A new random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The hex SHA-256 that the roster stores for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, token_sha256: str) -> bool:
    """Whether `token` hashes to `token_sha256`, in time independent of where they differ."""
    return hmac.compare_digest(hash_token(token), token_sha256)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None (also for a token outside RFC 6750's
    syntax: a control or non-ASCII byte can then never reach hashing, and is simply not a credential)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or BEARER_TOKEN_PATTERN.fullmatch(token) is None:
        return None
    return token
