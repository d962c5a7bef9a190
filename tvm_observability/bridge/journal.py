"""The vehicle's journal: snapshots the aggregator has not acknowledged, kept on disk across outages and restarts.

Pure of rclpy. The node `add`s every snapshot it builds; the live pusher reports each body it got accepted
(`acknowledged`), which forgets it; every `flush_interval_s` the rest is written to an sqlite3 database in one
transaction (WAL, `synchronous=FULL`: one fsync per flush, not per snapshot; a kill -9 or a power loss loses at
most the snapshots of the last flush interval). While the link is up nothing reaches the disk: every snapshot
is acknowledged before the next flush. The backlog uploader reads the oldest entries (`oldest`) and deletes them
once the aggregator acknowledged them (`delete`).

Bounded by `max_bytes` (bytes of snapshot bodies plus a fixed per-entry overhead) and `max_age_s` (by the
snapshot's wall time): the oldest entries are dropped first, and counted by reason. Snapshots older than
`downsample_after_s` are thinned to one of every `downsample_keep_every` (by seq, so every flush keeps the same
ones), never one that carries events nor the newest of a boot: counts are cumulative, so the snapshots kept carry
the dropped ones' counts and every total stays exact; only the resolution of the values' history drops.
A journal file that cannot be opened, has the wrong layout or fails sqlite's check is moved aside (one
`.corrupt` copy is kept for inspection) and replaced by an empty one; the problem is kept in `stats().problem`
for the bridge's /diagnostics. Nothing here raises on a disk problem after construction: the bridge keeps pushing live.
Thread-safe: the ROS executor, the live pusher and the backlog uploader call it from their own threads.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

JOURNAL_FILE = "journal.sqlite3"
"""The database's name inside `journal_dir`."""

ENTRY_OVERHEAD_BYTES = 64
"""What one entry costs beyond its body (row header, boot id, index): counted towards `max_bytes`."""

_SCHEMA_VERSION = 2
"""1: without `keep`. 2: + keep (1: never downsampled: the snapshot carries events)."""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS snapshots ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    " wall_time REAL NOT NULL, body BLOB NOT NULL, keep INTEGER NOT NULL DEFAULT 0)"
)
_MIGRATE_1_TO_2 = (
    # A version-1 row may carry events, which it did not record: none of them is ever downsampled.
    "ALTER TABLE snapshots ADD COLUMN keep INTEGER NOT NULL DEFAULT 0",
    "UPDATE snapshots SET keep = 1",
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One journalled snapshot: its row id (for `delete`), boot, sequence number, wall time and msgpack body."""

    id: int
    boot_id: str
    seq: int
    wall_time: float
    body: bytes


@dataclass(frozen=True, slots=True)
class JournalStats:
    entries: int = 0
    """Entries on disk and waiting for the next flush."""
    bytes: int = 0
    """Their size as counted against max_bytes."""
    oldest_wall_time: float | None = None
    dropped_size: int = 0
    """Entries dropped (oldest first) to stay within max_bytes, since the bridge started."""
    dropped_age: int = 0
    """Entries dropped because they were older than max_age_s."""
    downsampled: int = 0
    """Entries dropped by the downsampling of snapshots older than downsample_after_s."""
    replaced: int = 0
    """Times an unusable journal file was moved aside and replaced by an empty one."""
    problem: str = ""
    """The last disk problem ('' when none): reported in /diagnostics."""


def _cost(body: bytes) -> int:
    return len(body) + ENTRY_OVERHEAD_BYTES


class Journal:
    """A bounded, durable queue of unacknowledged snapshots, oldest first."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        max_age_s: float,
        flush_interval_s: float = 5.0,
        downsample_after_s: float = math.inf,
        downsample_keep_every: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(directory) / JOURNAL_FILE
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.flush_interval_s = flush_interval_s
        self.downsample_after_s = downsample_after_s
        self.downsample_keep_every = downsample_keep_every
        """1: no downsampling."""
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[bytes, tuple[str, int, float, bool]] = {}
        """Bodies added since the last flush (insertion order is chronological)."""
        self._flushed: dict[bytes, tuple[str, int]] = {}
        """Bodies written by the last flush: a live acknowledgement arriving late still finds them."""
        self._stats = JournalStats()
        self._disk_bytes = 0
        self._disk_entries = 0
        self._last_flush = self._clock()
        self._db: sqlite3.Connection | None = None
        self._thinned_through = 0
        """The highest row id the downsampling has judged (_downsample)."""
        with self._lock:
            self._open()

    # Writing ------------------------------------------------------------------------------------------

    def add(self, boot_id: str, seq: int, wall_time: float, body: bytes, *, keep: bool = False) -> None:
        """Keep a snapshot until it is acknowledged (in memory until the next flush); `keep`: never downsample it
        (it carries events)."""
        with self._lock:
            self._pending[body] = (boot_id, seq, wall_time, keep)

    def acknowledged(self, body: bytes) -> None:
        """The live push of `body` was accepted: forget it (a no-op for a body the journal does not hold)."""
        with self._lock:
            if self._pending.pop(body, None) is not None:
                return
            flushed = self._flushed.pop(body, None)
            if flushed is not None and self._db is not None:
                self._guard(lambda db: self._delete_where(db, "boot_id = ? AND seq = ?", flushed))

    def flush_due(self) -> bool:
        return self._clock() - self._last_flush >= self.flush_interval_s

    def flush(self) -> None:
        """Write what is waiting in one transaction, then apply the bounds (oldest dropped first)."""
        with self._lock:
            now = self._clock()
            self._last_flush = now
            pending, self._pending = self._pending, {}
            self._flushed = {body: (boot, seq) for body, (boot, seq, _, _) in pending.items()}
            if self._db is None:
                self._open()
            rows = [(boot, seq, wall, body, int(keep)) for body, (boot, seq, wall, keep) in pending.items()]
            self._guard(lambda db: self._write(db, rows, now))

    def _write(self, db: sqlite3.Connection, rows: list[tuple[str, int, float, bytes, int]], now: float) -> None:
        with db:
            if rows:
                db.executemany(
                    "INSERT INTO snapshots (boot_id, seq, wall_time, body, keep) VALUES (?, ?, ?, ?, ?)", rows
                )
                self._disk_entries += len(rows)
                self._disk_bytes += sum(_cost(r[3]) for r in rows)
            too_old = self._delete_where(db, "wall_time < ?", (now - self.max_age_s,))
            thinned = self._downsample(db, now)
            over = self._trim_to_size(db)
        if too_old or thinned or over:
            s = self._stats
            self._stats = replace(
                s,
                dropped_age=s.dropped_age + too_old,
                downsampled=s.downsampled + thinned,
                dropped_size=s.dropped_size + over,
            )

    def _downsample(self, db: sqlite3.Connection, now: float) -> int:
        """Beyond downsample_after_s keep the snapshots whose seq is a multiple of downsample_keep_every, those
        with events and the newest of each boot (its final counts, when the boot ended during the outage).

        Each row is judged once, when it first lies beyond the threshold: the rows judged are remembered by id
        (`_thinned_through`; ids grow with time), so a flush reads the few rows that crossed since the last one
        by the primary key instead of the whole table."""
        if self.downsample_keep_every <= 1:
            return 0
        threshold = now - self.downsample_after_s
        start = self._thinned_through
        (through,) = db.execute(
            "SELECT max(id) FROM snapshots WHERE id > ? AND wall_time < ?", (start, threshold)
        ).fetchone()
        if through is None:
            return 0
        self._thinned_through = through
        return self._delete_where(
            db,
            "id > ? AND id <= ? AND wall_time < ? AND keep = 0 AND seq % ? != 0 AND EXISTS"
            " (SELECT 1 FROM snapshots AS later WHERE later.id > snapshots.id AND later.boot_id = snapshots.boot_id)",
            (start, through, threshold, self.downsample_keep_every),
        )

    def _trim_to_size(self, db: sqlite3.Connection) -> int:
        dropped = 0
        while self._disk_bytes > self.max_bytes and self._disk_entries > 0:
            excess = self._disk_bytes - self.max_bytes
            ids: list[int] = []
            freed = 0
            for row_id, size in db.execute("SELECT id, length(body) FROM snapshots ORDER BY id LIMIT 256"):
                ids.append(row_id)
                freed += size + ENTRY_OVERHEAD_BYTES
                if freed >= excess:
                    break
            db.executemany("DELETE FROM snapshots WHERE id = ?", [(i,) for i in ids])
            self._disk_entries -= len(ids)
            self._disk_bytes -= freed
            dropped += len(ids)
        return dropped

    def _delete_where(self, db: sqlite3.Connection, where: str, args: tuple[object, ...]) -> int:
        row = db.execute(
            f"SELECT count(*), coalesce(sum(length(body)), 0) FROM snapshots WHERE {where}", args
        ).fetchone()
        if row[0]:
            db.execute(f"DELETE FROM snapshots WHERE {where}", args)
            self._disk_entries -= row[0]
            self._disk_bytes -= row[1] + row[0] * ENTRY_OVERHEAD_BYTES
        return int(row[0])

    # Reading (the backlog uploader) ----------------------------------------------------------------------

    def oldest(self, max_entries: int, max_bytes: int) -> list[Entry]:
        """The oldest written entries, at least one (if any) and at most max_entries / max_bytes of bodies."""
        with self._lock:
            result: list[Entry] = []

            def read(db: sqlite3.Connection) -> None:
                size = 0
                query = "SELECT id, boot_id, seq, wall_time, body FROM snapshots ORDER BY id LIMIT ?"
                for row_id, boot, seq, wall, body in db.execute(query, (max_entries,)):
                    size += len(body)
                    if result and size > max_bytes:
                        break
                    result.append(Entry(row_id, boot, seq, wall, bytes(body)))

            self._guard(read)
            return result

    def delete(self, entries: list[Entry]) -> None:
        """Forget entries the aggregator acknowledged."""
        with self._lock:

            def remove(db: sqlite3.Connection) -> None:
                with db:
                    for entry in entries:
                        if db.execute("DELETE FROM snapshots WHERE id = ?", (entry.id,)).rowcount:
                            self._disk_entries -= 1
                            self._disk_bytes -= _cost(entry.body)

            self._guard(remove)

    def stats(self) -> JournalStats:
        with self._lock:
            pending_bytes = sum(_cost(body) for body in self._pending)
            oldest: float | None = None
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    oldest = self._db.execute("SELECT min(wall_time) FROM snapshots").fetchone()[0]
            if oldest is None and self._pending:
                oldest = next(iter(self._pending.values()))[2]
            return replace(
                self._stats,
                entries=self._disk_entries + len(self._pending),
                bytes=self._disk_bytes + pending_bytes,
                oldest_wall_time=oldest,
            )

    def close(self) -> None:
        """Flush what is waiting and close the database."""
        self.flush()
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    # Opening and recovering -----------------------------------------------------------------------------

    def _open(self) -> None:
        """Open (or create) the database; an unusable file is moved aside and replaced. Called under the lock."""
        try:
            self._db = self._connect()
            return
        except (sqlite3.Error, OSError, _LayoutError) as exc:
            problem = f"journal {self.path} unusable ({type(exc).__name__}: {exc})"
        try:
            self._move_aside()
            self._db = self._connect()
        except (sqlite3.Error, OSError, _LayoutError) as exc:
            self._db = None
            self._note(f"{problem}; could not replace it ({type(exc).__name__}: {exc}): journal off until it can")
            return
        self._stats = replace(self._stats, replaced=self._stats.replaced + 1)
        self._note(f"{problem}; moved aside to {self.path.name}.corrupt and replaced by an empty journal")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level="DEFERRED")
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, _SCHEMA_VERSION):
                raise _LayoutError(f"layout version {version}, expected {_SCHEMA_VERSION}")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise _LayoutError("sqlite quick_check failed")
            with db:
                db.execute(_SCHEMA)
                if version == 1:
                    for statement in _MIGRATE_1_TO_2:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            entries, size = db.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM snapshots").fetchone()
        except BaseException:
            db.close()
            raise
        self._disk_entries = int(entries)
        self._disk_bytes = int(size) + int(entries) * ENTRY_OVERHEAD_BYTES
        self._thinned_through = 0  # every row is judged again after a start or a replacement
        return db

    def _move_aside(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, f"{self.path}.corrupt")

    def _guard(self, action: Callable[[sqlite3.Connection], object]) -> None:
        """Run `action` on the database; a failure is noted, and a damaged file is replaced. Under the lock."""
        if self._db is None:
            return
        try:
            action(self._db)
        except sqlite3.OperationalError as exc:  # disk full, I/O error, locked: the file itself may be fine
            self._note(f"journal {self.path}: {exc}")
        except sqlite3.DatabaseError as exc:  # malformed: replace the file
            problem = f"journal {self.path} damaged ({exc})"
            self._move_aside()
            self._open()
            if self._db is not None:
                self._stats = replace(self._stats, replaced=self._stats.replaced + 1)
                self._note(f"{problem}; moved aside to {self.path.name}.corrupt and replaced by an empty journal")

    def _note(self, problem: str) -> None:
        self._stats = replace(self._stats, problem=problem[:300])


class _LayoutError(Exception):
    """The file is an sqlite database, but not a journal this code can read."""
