"""Log capture that does not depend on propagation to the root logger.

pytest's `caplog` sees a record only if it propagates to the root logger. launch_testing's pytest plugin
calls `logging.setLoggerClass(LaunchLogger)`, whose loggers do not propagate, so whether `caplog` saw our
records depended on which plugins were installed and in which order they loaded. `captured` attaches its
handler to the named logger itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class Captured(logging.Handler):
    """The records one logger emitted while captured, and their text as a formatter writes them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@contextlib.contextmanager
def captured(name: str, level: int = logging.DEBUG) -> Iterator[Captured]:
    """Capture every record that logger `name` itself emits at `level` or above, whether it propagates or not."""
    logger = logging.getLogger(name)
    handler = Captured()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
