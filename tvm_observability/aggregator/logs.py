"""JSON logs in the fleet's layout: timestamp, level, service, component, message, context, metadata.

Loggers pass structured fields with `extra=` (request_id, vehicle_id, reason, ...); they land under
`context`. Nothing secret is ever passed: tokens never reach a log call.
"""

from __future__ import annotations

import logging
import socket
import sys
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


def configure_logging(level: str, environment: str, stream: TextIO | None = None) -> None:
    """Send every log record of the process, as JSON, to `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FleetJsonFormatter(environment=environment))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
