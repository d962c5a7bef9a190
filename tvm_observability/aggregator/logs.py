"""JSON logs in the fleet's layout: timestamp, level, service, component, message, context, metadata.

Loggers pass structured fields with `extra=` (request_id, vehicle_id, reason, ...); they land under
`context`. Nothing secret is ever passed: tokens never reach a log call of ours. Other layers (aiohttp's
parser errors quote the raw header line, asyncio's callbacks) are not ours to word, so every record is also
scrubbed on its way out (`RedactSecrets`), and refusals that a client can provoke at will are logged at a
bounded rate (`LogSummary`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

try:
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # python-json-logger < 3.1 (Ubuntu 22.04's apt package)
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef,attr-defined]

from .. import __version__

SERVICE = "telemetry_aggregator"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class FleetJsonFormatter(JsonFormatter):
    """Formats each record as one JSON object in the fleet's log layout."""

    def __init__(self, *, environment: str, service: str = SERVICE) -> None:
        super().__init__()
        self.metadata = {"host": socket.gethostname(), "environment": environment, "version": __version__}
        self.service = service

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        context = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        context.update(message_dict)
        log_data["timestamp"] = datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
            timespec="milliseconds"
        )
        log_data["level"] = record.levelname
        log_data["service"] = self.service
        log_data["component"] = record.name.rsplit(".", 1)[-1]
        log_data["message"] = record.getMessage() if not message_dict else record.message
        if context:
            log_data["context"] = context
        log_data["metadata"] = self.metadata


REDACTED = "[redacted]"
_AUTHORIZATION_LINE = re.compile(r"(?i)(\b(?:proxy-)?authori[^\s:=]*\s*[:=]\s*)[^\r\n]*")
"""An Authorization header as a parser quotes it, its name possibly broken by control bytes (`\\x01`):
everything after the name to the end of the line goes."""
_SEPARATOR = r"(?:\s|\\[tnrvf0]|\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|[\x00-\x1f\x7f\xa0])+"
"""Whitespace and control bytes, raw or as a traceback quotes them (`\\t`, `\\xa0`)."""
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(" + _SEPARATOR + r")[^\s'\"\\,;]+")
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*")
"""Words that could be a bearer token (RFC 6750 b64token, 16 characters or more)."""


class RedactSecrets(logging.Filter):
    """Scrubs credentials from every record a handler writes: message, arguments, `extra=` fields, exception
    and stack text. Removes Authorization header lines, `Bearer`/`Basic` credentials, and any word that is
    a configured token (`is_token`: the service sets it to a check against the configured token hashes)."""

    def __init__(self) -> None:
        super().__init__()
        self.is_token: Callable[[str], bool] = lambda word: False

    def scrub(self, text: str) -> str:
        text = _AUTHORIZATION_LINE.sub(lambda m: m.group(1) + REDACTED, text)
        text = _CREDENTIAL.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
        return _TOKEN_LIKE.sub(lambda m: REDACTED if self._is_quoted_token(m, text) else m.group(0), text)

    def _is_quoted_token(self, match: re.Match[str], text: str) -> bool:
        """A configured token, also when a quoted escape (`\\t`, `\\x01`) is glued to its front."""
        word = match.group(0)
        if self.is_token(word):
            return True
        escaped = match.start() > 0 and text[match.start() - 1] == "\\"
        return escaped and any(self.is_token(word[skip:]) for skip in (1, 3, 5))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a log call whose arguments do not fit its format: keep both, scrubbed
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = self.scrub(message)
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS and isinstance(value, (str, bytes)):
                record.__dict__[key] = self.scrub(value if isinstance(value, str) else repr(value))
        return True


def redaction_filters() -> list[RedactSecrets]:
    """The redacting filters on the root logger's handlers (set up by `configure_logging`)."""
    return [f for h in logging.getLogger().handlers for f in h.filters if isinstance(f, RedactSecrets)]


class LogSummary:
    """Logs at most `burst` records per key (a kind, e.g. a reason, and a client address) and `max_lines` per
    kind per `interval_s`; what is held back is counted and told in one summary line per interval. Remembers
    at most `max_keys` keys per interval (events past that are all held back), so neither the log nor the
    memory grows with the attack, however many addresses it comes from.

    Counters elsewhere stay exact; this decides only what is written to the log.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        burst: int = 5,
        interval_s: float = 10.0,
        max_lines: int = 20,
        max_keys: int = 1000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.burst = burst
        self.max_lines = max_lines
        self._lines: dict[str, int] = {}
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._monotonic = monotonic
        self._window_end = 0.0
        self._logged: dict[tuple[str, str], int] = {}
        self._held: dict[str, int] = {}
        self._held_sources: set[str] = set()
        self._flush_scheduled = False

    def admit(self, kind: str, source: str) -> bool:
        """Whether this event may be logged in full; otherwise it is counted for the summary."""
        now = self._monotonic()
        if now >= self._window_end:
            self.flush()
            self._window_end = now + self.interval_s
        key = (kind, source)
        count = self._logged.get(key)
        if count is None and len(self._logged) < self.max_keys:
            count = 0
        lines = self._lines.get(kind, 0)
        if count is not None and count < self.burst and lines < self.max_lines:
            self._logged[key] = count + 1
            self._lines[kind] = lines + 1
            return True
        self._held[kind] = self._held.get(kind, 0) + 1
        if len(self._held_sources) < self.max_keys:
            self._held_sources.add(source)
        self._schedule_flush()
        return False

    def flush(self) -> None:
        """Write the summary of what was held back, and start a new interval."""
        if self._held:
            self.logger.warning(
                "%s: %d more not logged in the last %g s",
                self.what,
                sum(self._held.values()),
                self.interval_s,
                extra={"not_logged": dict(sorted(self._held.items())), "sources": len(self._held_sources)},
            )
        self._logged.clear()
        self._lines.clear()
        self._held.clear()
        self._held_sources.clear()

    def _schedule_flush(self) -> None:
        """The summary is written at the end of the interval even when the events stop (needs a running loop)."""
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._flush_scheduled = True
        loop.call_later(max(0.0, self._window_end - self._monotonic()), self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if self._monotonic() >= self._window_end:
            self.flush()
            self._window_end = 0.0
        elif self._held:
            self._schedule_flush()


class ThrottleRequestErrors(logging.Filter):
    """aiohttp's server logs every request its HTTP parser refuses, one ERROR with a traceback each, as often
    as a client likes: on its logger, this lets through LogSummary's rate per exception type and client."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.summary = LogSummary(logger, "requests refused by the HTTP server")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        source = str(record.args[0]) if isinstance(record.args, tuple) and record.args else "unknown"
        return self.summary.admit(type(record.exc_info[1]).__name__, source)


AIOHTTP_SERVER_LOGGER = "aiohttp.server"


def configure_logging(level: str, environment: str, stream: TextIO | None = None) -> None:
    """Send every log record of the process, as JSON and with credentials scrubbed, to `stream` (stderr by
    default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FleetJsonFormatter(environment=environment))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger(AIOHTTP_SERVER_LOGGER)
    server.filters[:] = [f for f in server.filters if not isinstance(f, ThrottleRequestErrors)]
    server.addFilter(ThrottleRequestErrors(server))
