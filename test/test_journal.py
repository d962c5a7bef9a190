"""The vehicle journal: bounded, oldest first, survives a restart and kill -9, replaces a corrupt file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from support import wire_snapshot

from tvm_observability import codec
from tvm_observability.bridge.journal import ENTRY_OVERHEAD_BYTES, JOURNAL_FILE, Journal


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def body(seq: int, boot: str = "boot-a") -> bytes:
    return codec.encode_wire(wire_snapshot("V1", boot_id=boot, seq=seq, sent_at=float(seq)))


def open_journal(
    path: Path, clock: Clock, *, downsample_after_s: float = 3600.0, downsample_keep_every: int = 1, **kw: float
) -> Journal:
    settings = {"max_bytes": 1_000_000, "max_age_s": 3600.0, "flush_interval_s": 5.0, **kw}
    return Journal(
        path,
        max_bytes=int(settings["max_bytes"]),
        max_age_s=settings["max_age_s"],
        flush_interval_s=settings["flush_interval_s"],
        downsample_after_s=downsample_after_s,
        downsample_keep_every=downsample_keep_every,
        clock=clock,
    )


def test_acknowledged_snapshots_never_reach_the_disk(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock)
    for seq in range(1, 6):
        journal.add("boot-a", seq, clock.now + seq, body(seq))
        journal.acknowledged(body(seq))
    journal.add("boot-a", 6, clock.now + 6, body(6))
    journal.flush()
    assert [(e.boot_id, e.seq) for e in journal.oldest(100, 1_000_000)] == [("boot-a", 6)]
    # A live acknowledgement that arrives after the flush still removes the entry.
    journal.acknowledged(body(6))
    assert journal.oldest(100, 1_000_000) == []
    assert journal.stats().entries == 0
    assert journal.stats().bytes == 0


def test_oldest_first_in_bounded_batches_deleted_only_when_told(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock)
    for seq in range(1, 11):
        journal.add("boot-a", seq, clock.now + seq, body(seq))
    journal.add("boot-b", 1, clock.now + 11, body(1, "boot-b"))
    journal.flush()
    first = journal.oldest(4, 1_000_000)
    assert [e.seq for e in first] == [1, 2, 3, 4]
    assert [e.seq for e in journal.oldest(4, 1_000_000)] == [1, 2, 3, 4]  # not acknowledged: still there
    size = len(body(1))
    assert len(journal.oldest(100, 2 * size + size // 2)) == 2  # the byte limit caps a batch
    assert len(journal.oldest(100, 1)) == 1  # but a batch holds at least one entry
    journal.delete(first)
    rest = journal.oldest(100, 1_000_000)
    assert [(e.boot_id, e.seq) for e in rest] == [("boot-a", s) for s in range(5, 11)] + [("boot-b", 1)]
    assert rest[0].body == body(5)
    assert journal.stats().entries == 7


def test_size_cap_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    clock = Clock()
    cost = len(body(1)) + ENTRY_OVERHEAD_BYTES
    journal = open_journal(tmp_path, clock, max_bytes=cost * 5 + cost // 2)
    for seq in range(1, 9):
        journal.add("boot-a", seq, clock.now + seq, body(seq))
    journal.flush()
    assert [e.seq for e in journal.oldest(100, 1_000_000)] == [4, 5, 6, 7, 8]
    stats = journal.stats()
    assert (stats.entries, stats.dropped_size, stats.dropped_age) == (5, 3, 0)
    assert stats.bytes <= journal.max_bytes


def test_age_cap_drops_by_wall_time(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock, max_age_s=100.0)
    for seq in range(1, 5):
        journal.add("boot-a", seq, clock.now + seq * 30, body(seq))
    clock.now += 170  # seq 1 (at +30) and 2 (at +60) are now more than 100 s old
    journal.flush()
    assert [e.seq for e in journal.oldest(100, 1_000_000)] == [3, 4]
    assert journal.stats().dropped_age == 2


def test_survives_restart(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock)
    for seq in range(1, 4):
        journal.add("boot-a", seq, clock.now + seq, body(seq))
    journal.close()
    again = open_journal(tmp_path, clock)
    assert [e.seq for e in again.oldest(100, 1_000_000)] == [1, 2, 3]
    assert again.stats().entries == 3
    assert again.stats().replaced == 0


def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    """A real process journals one snapshot per step and flushes every 5; SIGKILL after a marker."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_journal import Clock, body, open_journal
        clock = Clock()
        journal = open_journal(__import__("pathlib").Path({str(tmp_path)!r}), clock)
        for seq in range(1, 24):
            clock.now += 1.0
            journal.add("boot-a", seq, clock.now, body(seq))
            if journal.flush_due():
                journal.flush()
        print("added", flush=True)
        sys.stdin.read()
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "added"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    journal = open_journal(tmp_path, Clock())
    seqs = [e.seq for e in journal.oldest(100, 1_000_000)]
    assert seqs == list(range(1, 21))  # flushed at 5, 10, 15, 20: 21-23 were still in memory
    assert journal.stats().replaced == 0


def test_corrupt_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b"this is not an sqlite database" * 100)
    clock = Clock()
    journal = open_journal(tmp_path, clock)
    stats = journal.stats()
    assert stats.replaced == 1
    assert "moved aside" in stats.problem
    assert (tmp_path / f"{JOURNAL_FILE}.corrupt").read_bytes().startswith(b"this is not")
    journal.add("boot-a", 1, clock.now, body(1))
    journal.flush()
    assert [e.seq for e in journal.oldest(10, 1_000_000)] == [1]


def test_foreign_layout_is_replaced(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    db.execute("PRAGMA user_version=99")
    db.close()
    journal = open_journal(tmp_path, Clock())
    assert journal.stats().replaced == 1
    assert "layout version 99" in journal.stats().problem


def test_damage_while_running_is_replaced_not_raised(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock)
    for seq in range(1, 200):
        journal.add("boot-a", seq, clock.now + seq, body(seq))
    journal.close()
    data = bytearray((tmp_path / JOURNAL_FILE).read_bytes())
    data[4096:12288] = b"\xff" * 8192  # overwrite table pages
    (tmp_path / JOURNAL_FILE).write_bytes(bytes(data))
    damaged = open_journal(tmp_path, clock)
    damaged.oldest(1000, 10_000_000)
    damaged.add("boot-a", 500, clock.now, body(500))
    damaged.flush()
    assert damaged.stats().replaced == 1
    assert "moved aside" in damaged.stats().problem
    assert [e.seq for e in damaged.oldest(1000, 10_000_000)] == [500]


def test_unusable_directory_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    journal = open_journal(blocker / "journal", Clock())  # a directory below a regular file
    journal.add("boot-a", 1, 1.0, body(1))
    journal.flush()
    assert journal.oldest(10, 1000) == []
    assert "could not replace" in journal.stats().problem


def test_old_backlog_is_downsampled_keeping_events_and_each_boots_last(tmp_path: Path) -> None:
    """Beyond downsample_after_s 1 of every N by seq, every snapshot with events, the newest of each boot: the
    counts are cumulative, so what is kept carries every count (errors, link) exactly."""
    clock = Clock()
    journal = open_journal(tmp_path, clock, max_age_s=86400.0, downsample_after_s=600.0, downsample_keep_every=5)
    for seq in range(1, 23):  # boot-a: one snapshot a minute for 22 minutes, events in seq 7
        journal.add("boot-a", seq, clock.now + seq * 60, body(seq), keep=seq == 7)
    journal.add("boot-b", 3, clock.now + 23 * 60, body(3, "boot-b"))  # boot-b began before the window's end
    for seq in range(4, 9):
        journal.add("boot-b", seq, clock.now + (20 + seq) * 60, body(seq, "boot-b"))
    clock.now += 29 * 60  # boot-a seq 1..18 (up to +18 min) are older than 10 min, boot-b (from +23 min) not yet
    journal.flush()
    kept = [(e.boot_id, e.seq) for e in journal.oldest(100, 1_000_000)]
    old_a = [5, 7, 10, 15]  # multiples of 5, and seq 7 with its events
    assert kept == [("boot-a", s) for s in [*old_a, 19, 20, 21, 22]] + [("boot-b", s) for s in range(3, 9)]
    assert journal.stats().downsampled == 18 - len(old_a)
    journal.flush()  # the same choice at every flush: nothing more goes
    assert journal.stats().downsampled == 18 - len(old_a)
    clock.now += 3600  # now all is old: boot-a keeps its newest (22, its final counts), boot-b its newest (8)
    journal.flush()
    assert [(e.boot_id, e.seq) for e in journal.oldest(100, 1_000_000)] == [
        ("boot-a", 5),
        ("boot-a", 7),
        ("boot-a", 10),
        ("boot-a", 15),
        ("boot-a", 20),
        ("boot-a", 22),
        ("boot-b", 5),
        ("boot-b", 8),
    ]


def test_downsampling_is_off_with_keep_every_1(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock, downsample_after_s=60.0, downsample_keep_every=1)
    for seq in range(1, 11):
        journal.add("boot-a", seq, clock.now + seq, body(seq))
    clock.now += 3000
    journal.flush()
    assert len(journal.oldest(100, 1_000_000)) == 10 and journal.stats().downsampled == 0


def test_a_layout_1_journal_is_migrated_and_its_rows_never_downsampled(tmp_path: Path) -> None:
    """Version-1 rows did not record whether they carry events: kept whole, none lost to the upgrade."""
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    db.execute(
        "CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " wall_time REAL NOT NULL, body BLOB NOT NULL)"
    )
    db.executemany(
        "INSERT INTO snapshots (boot_id, seq, wall_time, body) VALUES (?, ?, ?, ?)",
        [("boot-a", seq, 100.0 + seq, body(seq)) for seq in range(1, 7)],
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    clock = Clock(now=5000.0)
    journal = open_journal(tmp_path, clock, max_age_s=86400.0, downsample_after_s=60.0, downsample_keep_every=5)
    assert journal.stats().replaced == 0 and journal.stats().entries == 6
    journal.add("boot-a", 7, 200.0, body(7))
    journal.add("boot-a", 8, 201.0, body(8))
    journal.flush()
    assert [e.seq for e in journal.oldest(100, 1_000_000)] == [1, 2, 3, 4, 5, 6, 8]  # 7: new, downsampled
