"""Opening a file the service was told to read (config, TLS PEM, zones, state file): only a regular file.

A FIFO would block start-up or the event loop (on SIGHUP), a device may never end or cannot be renamed over;
both are refused before anything is opened. Config and the state file both read through here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class NotARegularFile(OSError):
    """The path exists but is not a regular file; `strerror` says so, like any other OSError's."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(None, "not a regular file", str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for reading in binary mode (symlinks followed). Raises NotARegularFile, or the OSError of
    os.stat or open (FileNotFoundError, PermissionError, ...)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotARegularFile(path)
    return open(path, "rb")
