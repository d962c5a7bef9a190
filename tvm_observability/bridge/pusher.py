"""Push snapshot bodies to the aggregator from an asyncio loop on its own thread.

The ROS executor thread calls `offer(body)`, which only stores the body and wakes the loop:
it never blocks on the network. The loop sends the latest body offered (latest wins: an
older snapshot is worthless once a newer one exists, and cumulative error counts make the
loss free). One keep-alive session, a per-request timeout, every response released.
While the aggregator is unreachable (connection errors, timeouts, 5xx, 408, 429) retries
back off exponentially with jitter up to `backoff_max_s`; the first accepted push resets
the delay, so the bridge is back to one push per period at once. Every outcome, with the round-trip time of
an accepted push, also goes to `link` (bridge/link.py): the vehicle's view of the link, sent in its snapshots.

Uses only aiohttp APIs present in aiohttp 3.8 (Ubuntu 22.04 / ROS 2 Humble).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import aiohttp

from ..codec import CONTENT_TYPE
from ..model import ROUTING_HEADER
from .link import LinkTracker
from .params import ClientSettings

_LOGGER = logging.getLogger(__name__)
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class PushStatus:
    """What the link has done so far; copied out under a lock for the node's diagnostics."""

    attempts: int = 0
    accepted: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success: float | None = None
    """Monotonic time of the last accepted push."""
    last_error: str = ""
    rejected: bool = False
    """The last push was refused for good (401, 403, 400, 413, ...): retrying the same will not help."""
    retry_in_s: float = 0.0


class Backoff:
    """Capped exponential delays with 'equal jitter' (each delay uniform in [d/2, d])."""

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay * (0.5 + 0.5 * self.rng())

    def reset(self) -> None:
        self.failures = 0


def link_level(status: PushStatus, now: float, started: float, error_after_s: float) -> tuple[str, str]:
    """The bridge's own diagnostic level (OK, WARN, ERROR) and message for the aggregator link."""
    since = started if status.last_success is None else status.last_success
    silent_for = now - since
    if status.rejected:
        return "ERROR", f"aggregator rejects pushes: {status.last_error}"
    if status.consecutive_failures == 0 and status.last_success is not None:
        return "OK", "pushing"
    if silent_for > error_after_s:
        return "ERROR", f"no accepted push for {silent_for:.0f} s: {status.last_error or 'no attempt yet'}"
    return "WARN", f"retrying: {status.last_error}" if status.last_error else "connecting"


_LEVELS_BY_RANK = ("OK", "WARN", "ERROR")


def links_level(levels: list[tuple[str, str]]) -> tuple[str, str]:
    """One level for the links to several aggregators (replicas, decision 0005): the vehicle is visible while one
    link works, so the best level counts, lowered to WARN while another link fails; each link's message, numbered."""
    if len(levels) == 1:
        return levels[0]
    best = min(_LEVELS_BY_RANK.index(level) for level, _ in levels)
    worst = max(_LEVELS_BY_RANK.index(level) for level, _ in levels)
    return _LEVELS_BY_RANK[max(best, min(worst, 1))], "; ".join(
        f"aggregator {n} {lvl}: {message}" for n, (lvl, message) in enumerate(levels, start=1)
    )


def client_session(url: str, ca_file: str, timeout_s: float, headers: dict[str, str]) -> aiohttp.ClientSession:
    """One keep-alive connection to the aggregator, verifying its certificate for https. Open it in the loop."""
    # An explicit, verifying context for https: aiohttp 3.8 reads `ssl=True` as "do not verify".
    if url.startswith("https:"):
        connector = aiohttp.TCPConnector(limit=1, ssl=ssl.create_default_context(cafile=ca_file or None))
    else:
        connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)


class AggregatorClient:
    """An asyncio loop on its own thread with one keep-alive HTTP session to one aggregator URL. The live
    Pusher and the backlog uploader each own one, so neither ever waits for the other.
    start() once, close() once; subclasses implement `_serve`."""

    thread_name = "aggregator-client"

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.url = settings.url
        # The routing header lets a load balancer route on the vehicle without decoding the body (decision 0001).
        self._headers = {"Content-Type": CONTENT_TYPE, ROUTING_HEADER: settings.vehicle_id}
        if settings.token:
            self._headers["Authorization"] = f"Bearer {settings.token}"
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
        self._lock = threading.Lock()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.thread_name} thread did not start")

    def _wake_loop(self) -> None:
        """Wake the loop thread (from any thread); a no-op before start and after the loop closed."""
        with self._lock:
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
                loop.call_soon_threadsafe(wake.set)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop after the request in flight (bounded by the request timeout); True if the thread ended."""
        with self._lock:
            self._closing = True
        self._wake_loop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
        self._ready.set()
        s = self.settings
        async with client_session(s.url, s.ca_file, s.request_timeout_s, self._headers) as session:
            await self._serve(session)

    async def _serve(self, session: aiohttp.ClientSession) -> None:
        raise NotImplementedError

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> tuple[int, bytes, float | None] | str:
        """POST `body`: (status, payload, Retry-After) once answered, or what went wrong on the way."""
        try:
            async with session.post(self.url, data=body) as response:
                payload = await response.read()
                return response.status, payload, _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return _describe(exc)


class Pusher(AggregatorClient):
    """The live push. start() once, offer() often, close() once."""

    thread_name = "telemetry-pusher"

    def __init__(
        self,
        settings: ClientSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_accepted: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(settings)
        self._on_accepted = on_accepted
        """Told each body the aggregator accepted (the journal forgets it), on the pusher's thread."""
        self._clock = clock
        self._pending: bytes | None = None
        self._status = PushStatus()
        self.link = LinkTracker(clock)
        """The vehicle's view of this link (RTT, failed attempts, outages), for the snapshots."""

    # Called from other threads ------------------------------------------------------------

    def offer(self, body: bytes) -> None:
        """Hand over the newest snapshot body; replaces any body not yet sent. Never blocks."""
        with self._lock:
            self._pending = body
            closing = self._closing
        if not closing:
            self._wake_loop()

    def status(self) -> PushStatus:
        with self._lock:
            return self._status

    # The loop thread ----------------------------------------------------------------------

    async def _serve(self, session: aiohttp.ClientSession) -> None:
        while True:
            body = await self._next_body()
            if body is None:
                break
            delay = await self._push(session, body)
            if delay > 0:
                with self._lock:
                    if self._pending is None:
                        self._pending = body  # nothing newer yet: retry this one
                await self._sleep_unless_closing(delay)

    async def _next_body(self) -> bytes | None:
        assert self._wake is not None
        while True:
            with self._lock:
                if self._closing:
                    return None
                body, self._pending = self._pending, None
                if body is not None:
                    return body
                self._wake.clear()
            await self._wake.wait()

    async def _sleep_unless_closing(self, delay: float) -> None:
        deadline = self._clock() + delay
        assert self._wake is not None
        while not self._closing:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _push(self, session: aiohttp.ClientSession, body: bytes) -> float:
        """POST one body; return the delay before the next attempt (0: go on normally)."""
        sent = self._clock()
        answer = await self._post(session, body)
        if isinstance(answer, str):
            return self._failed(answer, retryable=True)
        code, payload, retry_after = answer
        if 200 <= code < 300:
            self._succeeded()
            self.link.succeeded(self._clock() - sent)
            if self._on_accepted is not None:
                self._on_accepted(body)
            return 0.0
        reason = _reason(payload) or f"HTTP {code}"
        delay = self._failed(f"HTTP {code} {reason}", retryable=code in _RETRYABLE_STATUSES)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff.max_s))
        return delay

    def _succeeded(self) -> None:
        self._backoff.reset()
        with self._lock:
            s = self._status
            self._status = replace(
                s,
                attempts=s.attempts + 1,
                accepted=s.accepted + 1,
                consecutive_failures=0,
                last_success=self._clock(),
                rejected=False,
                retry_in_s=0.0,
            )

    def _failed(self, error: str, *, retryable: bool) -> float:
        delay = self._backoff.next_delay() if retryable else 0.0
        self.link.failed(retryable=retryable)
        with self._lock:
            s = self._status
            self._status = replace(
                s,
                attempts=s.attempts + 1,
                failures=s.failures + 1,
                consecutive_failures=s.consecutive_failures + 1,
                last_error=error,
                rejected=not retryable,
                retry_in_s=delay,
            )
        _LOGGER.debug("push failed: %s", error, extra={"retry_in_s": delay})
        return delay


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


def _reason(payload: bytes) -> str:
    try:
        data = json.loads(payload)
    except ValueError:
        return ""
    if isinstance(data, dict):
        return str(data.get("reason") or data.get("error") or "")[:200]
    return ""


def _retry_after(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None
