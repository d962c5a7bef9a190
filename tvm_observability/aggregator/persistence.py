"""The state file: an atomic, fsynced msgpack file holding the state image (state_image.py), so counters survive
restarts; and the service's side of it: restore before serving, save while dirty and on shutdown.

msgpack, not JSON: the last snapshot of each vehicle is kept as the bytes it arrived in, so a save
of 10,000 vehicles packs in milliseconds instead of re-encoding every snapshot.
`telemetry_aggregator state FILE` prints a file as JSON for humans.

A save writes a new temporary file beside the target (a unique name, created with O_EXCL|O_NOFOLLOW and mode
0600, so nothing planted there is followed or overwritten), fsyncs it, renames it over the target and fsyncs
the directory: after `kill -9` or power loss the file is either the old or the new image, never a torn one.

At start: no file, start empty; a structurally broken file (not msgpack, not an image), move it aside and
start empty; a file that cannot be read (permissions, a directory in its place), one written by a newer
version, or a broken one that cannot be moved aside: refuse to start (StateRefused), since starting empty
would lose the counters it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import codec
from . import state_image
from .files import open_regular
from .fleet import FleetState
from .slices import Slices, pause
from .state_image import CorruptState, StateRefused

if TYPE_CHECKING:
    from .app import Runtime

_LOGGER = logging.getLogger("tvm_observability.aggregator.state")

_TEMP_SUFFIX = ".tmp"


class StateUnreadable(StateRefused):
    """The file is there but cannot be read (permissions, not a regular file)."""


class StateFile:
    """Reads and atomically replaces one msgpack state file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._temp_prefix = f".{self.path.name}."

    def load(self) -> dict[str, Any] | None:
        """The saved image, or None if there is no file yet. Raises StateUnreadable if the file cannot be read,
        CorruptState if it does not hold a state image."""
        try:
            with open_regular(self.path) as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:  # NotARegularFile too: "...: not a regular file"
            raise StateUnreadable(f"cannot read the state file {self.path}: {exc.strerror or exc}") from None
        try:
            image = codec.unpack_state(data)
        except ValueError as exc:
            raise CorruptState(str(exc)) from None
        if not isinstance(image, dict):
            raise CorruptState(f"{self.path} does not hold a state image")
        return image

    def save(self, image: dict[str, Any]) -> int:
        """Replace the file with `image`; returns the bytes written. Raises OSError (disk full, read-only)."""
        return self.write(codec.pack_state(image))

    def write(self, data: bytes) -> int:
        """Replace the file with an already packed image (codec.pack_state_map); as `save`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp: a fresh name, O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600
        fd, tmp = tempfile.mkstemp(prefix=self._temp_prefix, suffix=_TEMP_SUFFIX, dir=self.path.parent)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(data)

    def remove_stale_temps(self) -> list[Path]:
        """Remove temporary files a killed process left beside the file; returns them."""
        removed: list[Path] = []
        with contextlib.suppress(OSError):  # no directory yet, or not readable: load() says so if it matters
            for entry in os.scandir(self.path.parent):
                if entry.name.startswith(self._temp_prefix) and entry.name.endswith(_TEMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
        return removed

    def quarantine(self) -> Path:
        """Move an unusable file aside (kept for inspection) and return its new path."""
        target = self.path.with_name(f"{self.path.name}.corrupt-{os.getpid()}")
        os.replace(self.path, target)
        return target


# -- the service's side: restore, periodic and final saves -------------------------------------------


async def keep_state(rt: Runtime) -> AsyncIterator[None]:
    """The app's cleanup context: restore the state file before serving; save it while dirty, and once more on
    shutdown. Raises StateRefused (before serving) when the service must not start on the file."""
    if rt.state_file is None:
        rt.ready = True
        yield
        return
    restore_state(rt, rt.state_file)
    rt.ready = True
    task = asyncio.create_task(_save_loop(rt, rt.state_file), name="state-save-loop")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if rt.fleet.dirty:
            await save_state(rt, rt.state_file)


def restore_state(rt: Runtime, state_file: StateFile) -> None:
    """Load the state file into the fleet. A broken one is moved aside, loudly, and the service starts empty;
    StateRefused propagates (the caller exits)."""
    path = str(state_file.path)
    if removed := state_file.remove_stale_temps():
        _LOGGER.info("removed temporary files of an interrupted save", extra={"files": [str(p) for p in removed]})
    try:
        image = state_file.load()
        if image is None:
            _LOGGER.info("no state file yet; starting empty", extra={"path": path})
            return
        skipped = state_image.restore(rt.fleet, image, keep_unknown=rt.config.allow_unknown_vehicles)
    except CorruptState as exc:
        try:
            moved = state_file.quarantine()
        except OSError as move_exc:
            raise StateRefused(
                f"the state file {path} is unusable ({exc}) and cannot be moved aside: {move_exc.strerror or move_exc}"
            ) from None
        _LOGGER.error("state file unusable, starting empty: %s", exc, extra={"path": path, "moved_to": str(moved)})
        return
    _LOGGER.info(
        "state restored",
        extra={"path": path, "vehicles": len(image["vehicles"]), "skipped_not_on_roster": skipped},
    )


async def save_state(rt: Runtime, state_file: StateFile) -> bool:
    """Write the fleet image now (packed in slices on the event loop, the file I/O in a thread); report and keep
    serving on failure."""
    rt.fleet.dirty = False
    data = await packed_image(rt.fleet, rt.config.state_flush_interval_s)  # pushes first, within a flush interval
    try:
        await asyncio.to_thread(state_file.write, data)
    except OSError as exc:
        rt.fleet.dirty = True
        rt.metrics.state_save_failures.inc()
        rt.metrics.state_healthy.set(0)
        if rt.state_error is None:
            _LOGGER.error("cannot write state file: %s", exc, extra={"path": str(state_file.path)})
        rt.state_error = exc.strerror or str(exc)
        return False
    if rt.state_error is not None:
        _LOGGER.info("state file writable again", extra={"path": str(state_file.path)})
    rt.state_error = None
    rt.metrics.state_saves.inc()
    rt.metrics.state_healthy.set(1)
    rt.metrics.state_last_save.set(rt.fleet.clock.time())
    return True


async def packed_image(fleet: FleetState, pause_budget_s: float = 0.0) -> bytes:
    """codec.pack_state(state_image.to_image(fleet)), packed in slices (slices.py) with the loop free in between:
    in one piece a 10,000-vehicle image held every request for ~100 ms (docs/benchmarks.md). For `pause_budget_s`
    the slices wait for quiet turns of the loop (slices.pause); past it, they take one turn each."""
    header = state_image.image_header(fleet)
    entries: list[bytes] = []
    until = time.perf_counter() + pause_budget_s
    slices = Slices()
    for vehicle_id, image in state_image.vehicle_images(fleet):
        entries.append(codec.pack_state_entry(vehicle_id, image))
        if slices.over():
            await pause(until)
            slices.restart()
    return codec.pack_state_map(header, "vehicles", entries)


async def _save_loop(rt: Runtime, state_file: StateFile) -> None:
    while True:
        await asyncio.sleep(rt.config.state_flush_interval_s)
        if rt.fleet.dirty:
            await save_state(rt, state_file)
