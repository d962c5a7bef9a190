"""The backlog uploader against real HTTP servers: oldest first, bounded batches, deleted only once acknowledged,
retried while the history store is down, kept (and logged once) by an aggregator without the endpoint."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgpack
import pytest
from aiohttp import web
from support import wire_snapshot
from test_pusher import until

from tvm_observability import codec
from tvm_observability.bridge.backlog import BacklogUploader
from tvm_observability.bridge.journal import Journal
from tvm_observability.bridge.params import ClientSettings
from tvm_observability.model import HISTORY_PATH, ROUTING_HEADER


class HistoryRecorder:
    """A history endpoint that decodes each batch into (boot, seq) pairs and answers from a script."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.headers: list[dict[str, str]] = []
        self.script = list(script or [])

    async def handle(self, request: web.Request) -> web.Response:
        items = msgpack.unpackb(await request.read(), raw=False)
        self.batches.append([(item["boot_id"], item["seq"]) for item in items])
        self.headers.append(dict(request.headers))
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            return web.json_response({"status": "written", "snapshots": len(items)})
        headers = {"Retry-After": "0"} if status == 503 else {}
        return web.json_response({"error": f"code_{status}", "detail": "x"}, status=status, headers=headers)


async def serve(recorder: HistoryRecorder) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post(HISTORY_PATH, recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}{HISTORY_PATH}"


def filled_journal(path: Path, count: int, boot: str = "boot-a") -> Journal:
    journal = Journal(path, max_bytes=10_000_000, max_age_s=86400.0, clock=lambda: 1000.0)
    for seq in range(1, count + 1):
        wire = wire_snapshot("V7", boot_id=boot, seq=seq, sent_at=900.0 + seq)
        journal.add(boot, seq, 900.0 + seq, codec.encode_wire(wire))
    journal.flush()
    return journal


def uploader(journal: Journal, url: str, **kwargs: float) -> BacklogUploader:
    settings = {"max_snapshots_per_s": 1000.0, "batch_size": 3, "slow_retry_s": 60.0, **kwargs}
    up = BacklogUploader(
        journal,
        ClientSettings(url, "V7", request_timeout_s=10.0, backoff_initial_s=0.05, backoff_max_s=0.2, token="tok"),
        idle_poll_s=0.05,
        max_snapshots_per_s=settings["max_snapshots_per_s"],
        batch_size=int(settings["batch_size"]),
        slow_retry_s=settings["slow_retry_s"],
    )
    up.start()
    return up


async def test_drains_oldest_first_in_batches_and_keeps_what_was_not_acknowledged(tmp_path: Path) -> None:
    recorder = HistoryRecorder(script=[200, 503, 200, 200])
    runner, url = await serve(recorder)
    journal = filled_journal(tmp_path, 7)
    up = uploader(journal, url)
    try:
        await until(lambda: up.status().uploaded == 7 and up.status().state == "idle", what="backlog drained")
        a = "boot-a"
        assert recorder.batches == [
            [(a, 1), (a, 2), (a, 3)],
            [(a, 4), (a, 5), (a, 6)],  # 503: kept and sent again
            [(a, 4), (a, 5), (a, 6)],
            [(a, 7)],
        ]
        assert journal.oldest(100, 10_000_000) == []
        status = up.status()
        assert (status.batches, status.failures) == (3, 1)
        assert {h["Authorization"] for h in recorder.headers} == {"Bearer tok"}
        assert {h[ROUTING_HEADER] for h in recorder.headers} == {"V7"}
    finally:
        assert await asyncio.to_thread(up.close)
        await runner.cleanup()


async def test_a_refused_batch_is_kept_and_a_too_large_one_is_split(tmp_path: Path) -> None:
    recorder = HistoryRecorder(script=[413, 422])
    runner, url = await serve(recorder)
    journal = filled_journal(tmp_path, 4)
    up = uploader(journal, url, batch_size=4)
    try:
        await until(lambda: up.status().state == "refused", what="refusal")
        assert [len(b) for b in recorder.batches] == [4, 2]  # 413 halved the batch; 422 is not retried soon
        assert "422" in up.status().last_error
        assert [e.seq for e in journal.oldest(100, 10_000_000)] == [1, 2, 3, 4]
        up.wake()  # as when the live link comes back: the refused batch is tried again, and accepted
        await until(lambda: up.status().uploaded == 4, what="accepted after the wake")
        assert journal.oldest(100, 10_000_000) == []
    finally:
        assert await asyncio.to_thread(up.close)
        await runner.cleanup()


async def test_unreachable_aggregator_keeps_everything(tmp_path: Path) -> None:
    recorder = HistoryRecorder()
    runner, url = await serve(recorder)
    await runner.cleanup()  # nothing listens there any more
    journal = filled_journal(tmp_path, 3)
    up = uploader(journal, url)
    try:
        await until(lambda: up.status().failures >= 3, what="three failed attempts")
        assert up.status().state == "retrying"
        assert [e.seq for e in journal.oldest(100, 10_000_000)] == [1, 2, 3]
    finally:
        assert await asyncio.to_thread(up.close)


async def test_an_aggregator_without_the_endpoint_keeps_the_journal_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that does not know the history endpoint, as an aggregator older than it (decision 0006): 404."""
    caplog.set_level(logging.WARNING, logger="tvm_observability.bridge.backlog")
    recorder = HistoryRecorder()
    runner, url = await serve(recorder)
    journal = filled_journal(tmp_path, 3)
    up = uploader(journal, url.replace(HISTORY_PATH, "/api/v1/older"), slow_retry_s=0.05)
    try:
        await until(lambda: up.status().failures >= 3, what="several attempts")
        assert up.status().state == "unsupported"
        assert "404" in up.status().last_error
        assert [e.seq for e in journal.oldest(100, 10_000_000)] == [1, 2, 3]
    finally:
        assert await asyncio.to_thread(up.close)
        await runner.cleanup()
    logged = [r.getMessage() for r in caplog.records if "no history endpoint" in r.getMessage()]
    assert len(logged) == 1
