"""The state file: an atomic, fsynced JSON image of the fleet state, so counters survive restarts.

A save writes a temporary file beside the target, fsyncs it, renames it over the target and
fsyncs the directory: after `kill -9` or power loss the file is either the old or the new image,
never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class StateFile:
    """Reads and atomically replaces one JSON state file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        """The saved image, or None if there is no file yet. Raises ValueError if it is unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            image = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path} is not valid JSON: {exc}") from None
        if not isinstance(image, dict):
            raise ValueError(f"{self.path} does not hold a state image")
        return image

    def save(self, image: dict[str, Any]) -> int:
        """Replace the file with `image`; returns the bytes written. Raises OSError (disk full, read-only)."""
        data = json.dumps(image, separators=(",", ":"), allow_nan=False).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(data)

    def quarantine(self) -> Path:
        """Move an unreadable file aside (kept for inspection) and return its new path."""
        target = self.path.with_name(f"{self.path.name}.corrupt-{os.getpid()}")
        os.replace(self.path, target)
        return target
