"""Upload the journal's backlog to the aggregator's history endpoint, apart from the live push.

Its own thread, asyncio loop and connection: the live `Pusher` never waits behind it (decision 0005: the live
push goes to every configured aggregator; the backlog to one at a time, this uploader's URL). Oldest first, in
batches of at most `batch_size` snapshots and `max_batch_bytes`, paced to `max_snapshots_per_s`; a batch is
deleted from the journal only after the aggregator answered 2xx (it has written it to history). Answers:

- 2xx: delete the batch, send the next one after the budget's pause.
- connection error, timeout, 408, 429, 5xx (503 + Retry-After while the history store is down): keep the batch,
  retry with the live push's capped exponential backoff (Retry-After honoured up to `slow_retry_s`).
- 404, 405: an aggregator without the endpoint (older version, decision 0006): keep the journal, log once,
  retry every `slow_retry_s`.
- 413: the batch is too large for this aggregator: halve the batch size (down to one snapshot) and retry.
- any other refusal (401, 403, 422, ...): keep the batch, log the reason once per reason, retry every
  `slow_retry_s`: nothing is deleted that the aggregator did not acknowledge.

The node calls `wake()` when the live link comes back, so the drain starts at once instead of after its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace

import aiohttp

from ..codec import encode_batch
from .journal import Entry, Journal
from .params import ClientSettings
from .pusher import _RETRYABLE_STATUSES, AggregatorClient, _reason

_LOGGER = logging.getLogger(__name__)

MAX_BATCH_BYTES = 256 * 1024
"""Most snapshot bytes in one upload (the aggregator's history batch limit is above this)."""


@dataclass(frozen=True, slots=True)
class BacklogStatus:
    state: str = "idle"
    """idle (nothing to send), draining, retrying, unsupported (404/405), refused (another 4xx)."""
    uploaded: int = 0
    """Snapshots the aggregator acknowledged from the backlog since the bridge started."""
    batches: int = 0
    failures: int = 0
    last_error: str = ""


class BacklogUploader(AggregatorClient):
    """start() once, wake() when the live link recovers, close() once."""

    thread_name = "backlog-uploader"

    def __init__(
        self,
        journal: Journal,
        settings: ClientSettings,
        *,
        max_snapshots_per_s: float,
        batch_size: int,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        slow_retry_s: float = 300.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        super().__init__(settings)
        self.journal = journal
        self._rate = max_snapshots_per_s
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._slow_retry_s = slow_retry_s
        self._idle_poll_s = idle_poll_s
        self._status = BacklogStatus()
        self._logged: set[str] = set()

    def wake(self) -> None:
        """Retry now (the live link has just come back)."""
        self._wake_loop()

    def status(self) -> BacklogStatus:
        with self._lock:
            return self._status

    async def _serve(self, session: aiohttp.ClientSession) -> None:
        while not self._closing:
            entries = self.journal.oldest(self._batch_size, self._max_batch_bytes)
            if not entries:
                self._set(state="idle")
                await self._pause(self._idle_poll_s)
                continue
            await self._pause(await self._upload(session, entries))

    async def _upload(self, session: aiohttp.ClientSession, batch: list[Entry]) -> float:
        """POST one batch; the pause before the next attempt."""
        answer = await self._post(session, encode_batch([e.body for e in batch]))
        if isinstance(answer, str):
            return self._retry(answer, None)
        code, payload, retry_after = answer
        if 200 <= code < 300:
            self.journal.delete(batch)
            self._backoff.reset()
            s = self.status()
            self._set(state="draining", uploaded=s.uploaded + len(batch), batches=s.batches + 1, last_error="")
            return len(batch) / self._rate
        error = f"HTTP {code} {_reason(payload) or ''}".strip()
        if code in _RETRYABLE_STATUSES:
            return self._retry(error, retry_after)
        self._failed(error)
        if code == 413 and self._batch_size > 1:
            self._batch_size = max(1, len(batch) // 2)
            self._log_once(f"413:{self._batch_size}", f"backlog batch too large ({error}): now {self._batch_size}")
            return 0.0
        if code in (404, 405):
            self._set(state="unsupported")
            self._log_once(
                "unsupported",
                f"aggregator at {self.url} has no history endpoint ({error}): keeping the journal, "
                f"retrying every {self._slow_retry_s:g} s",
            )
        else:
            self._set(state="refused")
            self._log_once(error, f"backlog refused by the aggregator ({error}): keeping the journal")
        return self._slow_retry_s

    def _retry(self, error: str, retry_after: float | None) -> float:
        self._failed(error)
        self._set(state="retrying")
        delay = self._backoff.next_delay()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._slow_retry_s))
        return delay

    def _failed(self, error: str) -> None:
        s = self.status()
        self._set(failures=s.failures + 1, last_error=error[:200])

    def _set(self, **changes: object) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)  # type: ignore[arg-type]

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            _LOGGER.warning(message)

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds unless woken or closing."""
        assert self._wake is not None
        if delay <= 0 or self._closing:
            return
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
