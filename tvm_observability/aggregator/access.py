"""Optional read protection of /metrics and the status page (and /api/v1/vehicles): bearer or basic auth.

Off unless `read_auth` is configured. Only hashes are configured; comparison is constant-time.
Vehicle pushes have their own per-vehicle credentials (see app.py), and health probes stay open.
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from ..auth import bearer_token, token_matches
from .config import ReadAuth
from .connections import Network, request_client
from .logs import LogSummary

_LOGGER = logging.getLogger("tvm_observability.aggregator.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadAuthSource = Callable[[], "ReadAuth | None"]


def read_guarded(
    handler: Handler, current: ReadAuthSource, trusted: Callable[[], Sequence[Network]] = tuple
) -> Handler:
    """`handler` behind read auth: `current()` gives the credentials in force (a config reload changes them; None:
    open), `trusted()` the proxies whose X-Forwarded-For names the client logged. Wrapped per route, not as a
    middleware, so that pushes never pass through it."""

    refusal_log = LogSummary(_LOGGER, "read refused")

    async def guard(request: web.Request) -> web.StreamResponse:
        auth = current()
        if auth is None or allowed(auth, request.headers.get("Authorization")):
            return await handler(request)
        remote = request_client(request, trusted())
        if refusal_log.admit("read_refused", remote):
            _LOGGER.warning(
                "read refused: missing or wrong credentials", extra={"path": request.path, "remote": remote}
            )
        challenges = []
        if auth.bearer_token_sha256 is not None:
            challenges.append('Bearer realm="metrics"')
        if auth.basic_password_sha256 is not None:
            challenges.append('Basic realm="metrics", charset="UTF-8"')
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": ", ".join(challenges)})

    return guard


def allowed(auth: ReadAuth, authorization: str | None) -> bool:
    """Whether the Authorization header carries the configured bearer token or basic credentials."""
    token = bearer_token(authorization)
    if token is not None:
        return auth.bearer_token_sha256 is not None and token_matches(token, auth.bearer_token_sha256)
    credentials = _basic(authorization)
    if credentials is None or auth.basic_username is None or auth.basic_password_sha256 is None:
        return False
    username, password = credentials
    user_ok = hmac.compare_digest(username.encode("utf-8"), auth.basic_username.encode("utf-8"))
    password_ok = token_matches(password, auth.basic_password_sha256)
    return user_ok and password_ok


def _basic(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), a non-ASCII header byte or non-UTF-8 credentials (UnicodeError)
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None
