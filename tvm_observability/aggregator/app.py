"""The aiohttp application: ingest, /metrics, health. Built by `make_app`, which the CLI and tests share.

Request path of a push: content type -> credential (the token alone names its vehicle) -> routing header ->
size -> msgpack decode (codec) -> schema (ingest) -> body's vehicle against credential and header -> rate
limit -> fleet state. Every refusal is a typed
TelemetryError: JSON reason + status, counted by reason, logged without secrets, and no state change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import logging
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry

from .. import codec
from ..auth import bearer_token, hash_token
from ..errors import (
    BodyTimeout,
    BodyTooLarge,
    Forbidden,
    MalformedBody,
    RateLimited,
    RoutingMismatch,
    TelemetryError,
    Unauthenticated,
    UnknownVehicle,
    UnsupportedMediaType,
)
from ..model import HISTORY_PATH, ROUTING_HEADER, TELEMETRY_PATH, VehicleSnapshot
from . import remote_write, slices
from .access import read_guarded
from .backfill import snapshot_series
from .collector import Exposition, ServiceMetrics, disable_created_series, negotiate
from .config import AggregatorConfig, HistoryConfig
from .connections import request_client
from .event_log import EventLog, EventLogSettings
from .fleet import Clock, FleetState, Outcome, SystemClock
from .fleet_map import render_map
from .fleet_view import build_view
from .geofence_monitor import GeofenceMonitor
from .history import accept_batch, mark_written, parse_batch
from .ingest import IngestLimits, decode_snapshot
from .logs import LogSummary
from .persistence import StateFile, keep_state
from .ratelimit import RateLimiter
from .settings import Settings, derive
from .status_page import CONTENT_SECURITY_POLICY
from .status_page import render as render_status_page

_LOGGER = logging.getLogger("tvm_observability.aggregator.ingest")

VEHICLES_PATH = "/api/v1/vehicles"
ZONES_PATH = "/api/v1/zones"
ACCEPTED_CONTENT_TYPES = frozenset({codec.CONTENT_TYPE, "application/x-msgpack"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""HTTP methods counted under their own label; any other token a client sends is counted as `other`."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_UNKNOWN_STATUS_MEMORY = 10_000
_JSON = "application/json; charset=utf-8"
HISTORY_RETRY_AFTER_S = 30
"""Retry-After of a 503 while the history store cannot be written: the vehicle keeps the batch and comes back."""


@dataclass
class Runtime:
    """Mutable service state shared by the handlers and background tasks (one per app)."""

    settings: Settings
    """The config in force and what is derived from it; replaced as a whole by `apply`."""
    fleet: FleetState
    metrics: ServiceMetrics
    registry: CollectorRegistry
    """Fleet and service metrics through prometheus_client's generic path (get_sample_value, tests)."""
    exposition: Exposition
    """What /metrics serves: the same bytes, rendered from per-vehicle caches."""
    limiter: RateLimiter
    state_file: StateFile | None
    geofence: GeofenceMonitor
    events: EventLog
    """Vehicle error events: deduplicated, capped, written to their own file (event_log.py)."""
    ready: bool = False
    state_error: str | None = None
    unknown_statuses_logged: set[tuple[str, str]] = field(default_factory=set)
    refusal_log: LogSummary = field(default_factory=lambda: LogSummary(_LOGGER, "push rejected"))
    status_log: LogSummary = field(default_factory=lambda: LogSummary(_LOGGER, "unknown statuses"))
    """Unknown statuses are logged once per vehicle and status, and at LogSummary's rate however many arrive."""
    events_log: LogSummary = field(default_factory=lambda: LogSummary(_LOGGER, "vehicle events not written"))
    """A failing events file is told in the service's own log at LogSummary's rate."""
    history_client: aiohttp.ClientSession | None = None
    """The remote-write connection pool, opened at the first backfill, closed with the app."""
    history_auth: aiohttp.BasicAuth | None = None
    """Refusals are counted exactly, but logged at most LogSummary's burst per reason and client per interval."""

    @property
    def config(self) -> AggregatorConfig:
        return self.settings.config

    @property
    def ingest_limits(self) -> IngestLimits:
        return self.settings.ingest

    @property
    def token_owner(self) -> Mapping[str, str]:
        return self.settings.token_owner

    def apply(self, settings: Settings) -> tuple[list[str], list[str]]:
        """Put reloaded settings in force, in one step of the event loop; returns the roster vehicles
        (added, dropped). The components take their part in their own one place, as at construction."""
        added, dropped = self.fleet.reconfigure(settings.config.vehicles, settings.fleet)
        self.limiter.reconfigure(settings.rate)
        self.geofence.reconfigure(settings.zones, settings.geofence)
        self.geofence.retain({v.vehicle_id for v in self.fleet})
        self.settings = settings
        return added, dropped


RUNTIME = web.AppKey("runtime", Runtime)


def make_app(config: AggregatorConfig, *, clock: Clock | None = None) -> web.Application:
    """Build the aggregator app. State is restored and persisted by the app's cleanup context."""
    disable_created_series()
    clock = clock or SystemClock()
    settings = derive(config)
    fleet = FleetState(config.vehicles, settings.fleet, clock=clock)
    geofence = GeofenceMonitor(settings.zones, settings.geofence)
    exposition = Exposition(fleet, geofence)
    runtime = Runtime(
        settings=settings,
        fleet=fleet,
        metrics=ServiceMetrics(exposition.service_registry),
        registry=exposition.registry,
        exposition=exposition,
        limiter=RateLimiter(settings.rate, clock.monotonic),
        state_file=StateFile(config.state_file) if config.state_file else None,
        geofence=geofence,
        events=EventLog(
            None if config.events is None else EventLogSettings(**dataclasses.asdict(config.events)),
            environment=config.environment,
            monotonic=clock.monotonic,
            wall=clock.time,
        ),
    )
    app = web.Application(
        middlewares=[_red_metrics],
        client_max_size=config.limits.max_body_bytes,
    )
    app[RUNTIME] = runtime
    app.cleanup_ctx.append(lambda _: keep_state(runtime))
    app.cleanup_ctx.append(lambda _: recall_geofences(runtime))
    app.on_cleanup.append(_close_history_client)
    app.on_cleanup.append(_close_event_log)
    app.router.add_post(TELEMETRY_PATH, handle_telemetry)
    app.router.add_post(HISTORY_PATH, handle_history)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    for path, handler in READ_PROTECTED.items():
        app.router.add_get(
            path, read_guarded(handler, lambda: runtime.config.read_auth, lambda: runtime.config.trusted_proxies)
        )
    return app


async def recall_geofences(rt: Runtime) -> AsyncIterator[None]:
    """After the state is restored: the last known violations of the restored vehicles stay known."""
    rt.geofence.recall(v.snapshot for v in rt.fleet if v.snapshot is not None)
    yield


async def _close_event_log(app: web.Application) -> None:
    app[RUNTIME].events.close()


async def _close_history_client(app: web.Application) -> None:
    client = app[RUNTIME].history_client
    if client is not None:
        await client.close()


# -- middleware --------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _red_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route (unknown paths share one label, so no label explosion)."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "other"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        method = request.method if request.method in _METHODS else "other"
        request.app[RUNTIME].metrics.observe_request(method, endpoint, status, time.perf_counter() - started)


# -- ingest ------------------------------------------------------------------------------------


async def handle_telemetry(request: web.Request) -> web.Response:
    """POST /api/v1/telemetry: one msgpack snapshot from one vehicle. (fast_push.py answers the plain pushes
    that arrive whole with the same steps, without this request object; every other push comes here.)"""
    rt = request.app[RUNTIME]
    request_id = _request_id(request)
    vehicle_id: str | None = None
    try:
        body, credential, routed = await _admitted_body(rt, request, rt.config.limits.max_body_bytes)
        snap = decode_snapshot(body, rt.ingest_limits)
        vehicle_id = snap.vehicle_id
        outcome = take_push(rt, snap, body, credential, routed)
    except TelemetryError as exc:
        return _reject(rt, exc, request, request_id, vehicle_id)
    after_push(rt, snap, outcome, request_id)
    return web.Response(
        body=acknowledgement(outcome, snap), headers={"Content-Type": _JSON, "X-Request-Id": request_id}
    )


def take_push(rt: Runtime, snap: VehicleSnapshot, body: bytes, credential: str | None, routed: str | None) -> Outcome:
    """A decoded push, after its credential and routing header were checked: may it write its vehicle, is it
    within the rate, then folded into the fleet. Raises TelemetryError with nothing changed."""
    _authorise(rt, snap.vehicle_id, credential, routed)
    if not rt.limiter.check(snap.vehicle_id):
        raise RateLimited(f"more than {rt.config.limits.rate_limit_per_vehicle_hz:g} pushes/s from {snap.vehicle_id}")
    outcome = rt.fleet.apply(snap, body)
    rt.limiter.take(snap.vehicle_id)  # only admitted vehicles ever get a bucket
    return outcome


def after_push(rt: Runtime, snap: VehicleSnapshot, outcome: Outcome, request_id: str) -> None:
    """What follows a taken push: counts, its events, the logs it calls for."""
    rt.metrics.received.inc()
    _write_events(rt, snap, request_id)
    if outcome is Outcome.DUPLICATE:
        rt.metrics.duplicates.inc()
    elif outcome is Outcome.ACCEPTED and not rt.fleet.is_known_status(snap.status):
        _log_unknown_status(rt, snap, request_id)
    if outcome is Outcome.ACCEPTED:
        for far in rt.geofence.observe(snap, rt.fleet.clock.monotonic()):
            _LOGGER.warning(
                "vehicle is %.0f km outside operating area %s: is the zone drawn in the wrong place, or the zones "
                "file in [latitude, longitude] order (GeoJSON is [longitude, latitude])?",
                far.distance_m / 1000.0,
                far.zone,
                extra={"request_id": request_id, "vehicle_id": far.vehicle_id, "zone": far.zone},
            )


_ACK = '{"status": "%s", "vehicle_id": "%s", "boot_id": "%s", "seq": %d}'
"""The acknowledgement of a push, as json.dumps writes it: every field is a pattern-checked id (no character
that JSON escapes), an outcome name or an integer, so formatting it is exact and cheaper than encoding a dict."""
ACK_CONTENT_TYPE = _JSON


def acknowledgement(outcome: Outcome, snap: VehicleSnapshot) -> bytes:
    return (_ACK % (outcome.value, snap.vehicle_id, snap.boot_id, snap.seq)).encode()


def _write_events(rt: Runtime, snap: VehicleSnapshot, request_id: str) -> None:
    """Write a snapshot's events (each once: the event log keeps the watermark), whatever became of its values:
    a stale or duplicate push still carries events the log may not have."""
    if not snap.events:
        return
    vehicle = rt.fleet.get(snap.vehicle_id)
    skew = vehicle.clock_skew_s if vehicle is not None and vehicle.clock_skew_s is not None else 0.0
    record = vehicle.boots.get(snap.boot_id) if vehicle is not None else None  # None: a boot retired since
    result = rt.events.write(
        snap.vehicle_id,
        snap.boot_id,
        snap.events,
        watermark=0 if record is None else record.event_seq,
        skew_s=skew,
        request_id=request_id,
    )
    if record is not None and result.watermark > record.event_seq:
        record.event_seq = result.watermark
        rt.fleet.dirty = True  # the watermark is saved with the boots
    for level, count in result.written.items():
        rt.metrics.vehicle_log_events.labels(snap.vehicle_id, level).inc(count)
    for reason, count in result.dropped.items():
        rt.metrics.vehicle_log_events_dropped.labels(reason).inc(count)
    if result.error is not None and rt.events_log.admit("write_failed", "events"):
        _LOGGER.error(
            "vehicle events not written: %s",
            result.error,
            extra={"request_id": request_id, "vehicle_id": snap.vehicle_id},
        )


async def handle_history(request: web.Request) -> web.Response:
    """POST /api/v1/telemetry/history: a batch of one vehicle's journalled snapshots (history.py). The same
    checks as a push, in the same order, with the batch's own limits; decoded off the event loop; the live rate
    limit does not apply (the bridge paces its backlog) and live values and liveness are never touched."""
    rt = request.app[RUNTIME]
    request_id = _request_id(request)
    vehicle_id: str | None = None
    history = rt.config.history
    try:
        body, credential, routed = await _admitted_body(rt, request, history.max_body_bytes)
        limits = rt.ingest_limits
        snaps = await asyncio.to_thread(lambda: parse_batch(codec.decode(body), limits, history.max_batch_snapshots))
        vehicle_id = snaps[0].vehicle_id
        _authorise(rt, vehicle_id, credential, routed)
        outcomes, to_write, fresh = accept_batch(rt.fleet, snaps, store=history.remote_write_url is not None)
    except TelemetryError as exc:
        return _reject(rt, exc, request, request_id, vehicle_id)
    if to_write:
        error = await _backfill(rt, history, to_write, outcomes)
        if error is not None:
            _LOGGER.warning(
                "history not written, the vehicle keeps its backlog: %s",
                error,
                extra={"request_id": request_id, "vehicle_id": vehicle_id},
            )
            return web.json_response(
                {"error": "history_unavailable", "detail": error},
                status=503,
                headers={"X-Request-Id": request_id, "Retry-After": str(HISTORY_RETRY_AFTER_S)},
            )
    for snap in snaps:  # events ride on backlog snapshots too (decision 0004), each written once
        _write_events(rt, snap, request_id)
    for outcome, count in outcomes.items():
        if count:
            rt.metrics.history_snapshots.labels(outcome).inc(count)
    _report_outage_breaches(rt, fresh, request_id)
    return web.json_response(
        {"status": "accepted", "vehicle_id": vehicle_id, "snapshots": len(snaps), **outcomes},
        headers={"X-Request-Id": request_id},
    )


def _report_outage_breaches(rt: Runtime, fresh: list[VehicleSnapshot], request_id: str) -> None:
    """A geofence breach that began during a link outage shows only in the backlog: reported when the backlog
    arrives (a WARNING line per breach and a counter), never silently filled into history. Reported once: only
    snapshots seen here for the first time, after the batch was written (a retried batch reports nothing)."""
    for breach in rt.geofence.breaches(fresh):
        kind = breach.verdict.zone_kind or "unknown"
        rt.metrics.outage_breaches.labels(kind).inc()
        _LOGGER.warning(
            "geofence breach during a link outage: %s %s at %s (vehicle time)",
            breach.verdict.status,
            breach.verdict.zone,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(breach.sent_at)),
            extra={
                "request_id": request_id,
                "vehicle_id": breach.vehicle_id,
                "boot_id": breach.boot_id,
                "seq": breach.seq,
                "zone": breach.verdict.zone,
                "kind": kind,
                "longitude": breach.position[0],
                "latitude": breach.position[1],
            },
        )


async def _backfill(
    rt: Runtime, history: HistoryConfig, snaps: list[VehicleSnapshot], outcomes: dict[str, int]
) -> str | None:
    """Write the values of `snaps` to the remote-write endpoint; None once written (watermarks advanced,
    `outcomes` updated), else what went wrong (nothing advanced: the vehicle sends the batch again)."""
    assert history.remote_write_url is not None and history.job is not None and history.instance is not None
    series, dropped = snapshot_series(
        rt.fleet,
        snaps,
        job=history.job,
        instance=history.instance,
        now=rt.fleet.clock.time(),
        max_age_s=history.max_sample_age_s,
    )
    if series:
        body = remote_write.encode(series)
        started = time.perf_counter()
        try:
            client, auth = _history_client(rt, history)
            async with client.post(
                history.remote_write_url,
                data=body,
                headers=remote_write.HEADERS,
                auth=auth,
                timeout=aiohttp.ClientTimeout(total=history.timeout_s),
            ) as response:
                answer = (await response.read())[:300].decode("utf-8", "replace").strip()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            rt.metrics.remote_write_failures.inc()
            return f"remote write to {history.remote_write_url} failed: {type(exc).__name__}: {exc}"[:300]
        finally:
            rt.metrics.remote_write_duration.observe(time.perf_counter() - started)
        if status // 100 != 2:
            if "too old" not in answer:  # Prometheus 2.42 answers a too-old sample with 500: refused for good
                rt.metrics.remote_write_failures.inc()
                return f"remote write to {history.remote_write_url} answered {status}: {answer}"
            _LOGGER.warning(
                "remote write refused a batch as too old (%s): dropped; keep history.max_sample_age_s within the "
                "receiver's out_of_order_time_window",
                answer,
            )
            dropped["too_old"] += len(snaps) - sum(dropped.values())
            series = []
    mark_written(rt.fleet, snaps)
    for reason, count in dropped.items():
        if count:
            rt.metrics.history_dropped.labels(reason).inc(count)
    outcomes["dropped"] = sum(dropped.values())
    outcomes["written"] = len(snaps) - outcomes["dropped"]
    rt.metrics.history_samples.inc(sum(len(samples) for _, samples in series))
    return None


def _history_client(rt: Runtime, history: HistoryConfig) -> tuple[aiohttp.ClientSession, aiohttp.BasicAuth | None]:
    """The remote-write connection pool and credentials, made at the first backfill (their keys are restart-only).
    Certificates are always verified: aiohttp's `ssl=True` would not, so the context is explicit."""
    if rt.history_client is None:
        context = ssl.create_default_context(cafile=history.ca_file)
        rt.history_client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        if history.basic_username is not None and history.basic_password_file is not None:
            with open(history.basic_password_file, encoding="utf-8") as handle:
                rt.history_auth = aiohttp.BasicAuth(history.basic_username, handle.read().strip())
    return rt.history_client, rt.history_auth


async def _admitted_body(rt: Runtime, request: web.Request, max_bytes: int) -> tuple[bytes, str | None, str | None]:
    """What every POST checks before decoding, in this order: content type, credential, routing header, then the
    body within `max_bytes` and the body timeout. Returns (body, the credential's vehicle, the routing header's)."""
    _check_content_type(request)
    credential = authenticate(rt, bearer_token(request.headers.get("Authorization")))
    routed = routing_vehicle(request.headers.get(ROUTING_HEADER), credential)
    body = await _read_body(request, max_bytes, rt.config.limits.body_timeout_s)
    return body, credential, routed


def _check_content_type(request: web.Request) -> None:
    if request.content_type not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaType(f"Content-Type must be {codec.CONTENT_TYPE}, got {request.content_type!r}")


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """Read at most `limit` bytes within `timeout_s`; refuse more without reading it all, and a compressed body
    that does not decompress (aiohttp decodes Content-Encoding while reading) as malformed, not as a 500."""
    try:
        return await _read_limited_body(request, limit, timeout_s)
    except (RequestPayloadError, HttpProcessingError) as exc:
        raise MalformedBody(f"body does not decode as its Content-Encoding says: {exc}") from None


async def _read_limited_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body of {request.content_length} bytes exceeds the limit of {limit}")

    if request.content.is_eof():  # the whole body is already here (the usual push): no timer task needed
        body = request.content.read_nowait()
        if len(body) > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        return body

    async def read() -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimeout(f"body not received within {timeout_s:g} s") from None


def authenticate(rt: Runtime, token: str | None) -> str | None:
    """The roster vehicle whose credential `token` is (None while auth_required is off), before the body is
    read: every unauthenticated push gets the same 401, whatever vehicle or schema its body would claim."""
    if not rt.config.auth_required:
        return None
    if token is None:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
    digest = hash_token(token)
    owner = rt.token_owner.get(digest)  # token hashes are unique per roster (refused at load otherwise)
    if owner is None:
        raise Unauthenticated("bearer token not valid")
    expected = rt.config.vehicles[owner].token_sha256
    if expected is None or not hmac.compare_digest(digest, expected):
        raise Unauthenticated("bearer token not valid")
    return owner


def _credential_owner(rt: Runtime, request: web.Request) -> str | None:
    """The vehicle whose credential a refused request carried, if any: what its refusal is logged under when it
    was refused before its body named a vehicle."""
    token = bearer_token(request.headers.get("Authorization"))
    return None if token is None else rt.token_owner.get(hash_token(token))


def is_configured_token(rt: Runtime, word: str) -> bool:
    """Whether `word` is a credential of the running config (a vehicle's or read_auth's): such a word must
    never reach a log, whatever layer logs it."""
    digest = hash_token(word)
    read_auth = rt.config.read_auth
    if read_auth is not None and digest in (read_auth.bearer_token_sha256, read_auth.basic_password_sha256):
        return True
    return digest in rt.token_owner


def routing_vehicle(routed: str | None, credential: str | None) -> str | None:
    """The routing header's vehicle (decision record 0001), checked against the credential; None when absent
    (bridges older than the header)."""
    if routed is not None and credential is not None and routed != credential:
        raise RoutingMismatch(f"{ROUTING_HEADER} names another vehicle than the credential's")
    return routed


def _authorise(rt: Runtime, vehicle_id: str, credential: str | None, routed: str | None) -> None:
    """May this push (its credential, routing header) write `vehicle_id`, the body's vehicle?"""
    if routed is not None and routed != vehicle_id:
        raise RoutingMismatch(f"{ROUTING_HEADER} names another vehicle than the body's vehicle_id")
    on_roster = vehicle_id in rt.config.vehicles
    if credential is not None and credential != vehicle_id and on_roster:
        raise Forbidden(f"this credential may not write vehicle {vehicle_id}")
    if not on_roster and (credential is not None or not rt.config.allow_unknown_vehicles):
        raise UnknownVehicle(f"vehicle {vehicle_id} is not on the roster")


def _reject(
    rt: Runtime, exc: TelemetryError, request: web.Request, request_id: str, vehicle_id: str | None
) -> web.Response:
    rt.metrics.rejected.labels(exc.reason).inc()
    vehicle_id = vehicle_id or _credential_owner(rt, request)
    remote = request_client(request, rt.config.trusted_proxies)
    if rt.refusal_log.admit(exc.reason, remote):
        _LOGGER.warning(
            "push rejected: %s",
            exc.detail,
            extra={
                "request_id": request_id,
                "vehicle_id": vehicle_id,
                "reason": exc.reason,
                "status": exc.status,
                "remote": remote,
            },
        )
    headers = {"X-Request-Id": request_id}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="telemetry"'
    # Close the connection when the body was not consumed, so unread bytes never reach the next request.
    if exc.status in (408, 413) or (exc.status in (400, 401, 415) and not request.content.at_eof()):
        headers["Connection"] = "close"
    return web.json_response(exc.to_json(), status=exc.status, headers=headers)


def _log_unknown_status(rt: Runtime, snap: VehicleSnapshot, request_id: str) -> None:
    key = (snap.vehicle_id, str(snap.status))
    if key in rt.unknown_statuses_logged:
        return
    if len(rt.unknown_statuses_logged) < _UNKNOWN_STATUS_MEMORY:
        rt.unknown_statuses_logged.add(key)
    if not rt.status_log.admit("unknown_status", snap.vehicle_id):  # a vehicle inventing statuses: bounded
        return
    _LOGGER.warning(
        "vehicle reported status %r outside the configured set; exported as unknown",
        snap.status,
        extra={"request_id": request_id, "vehicle_id": snap.vehicle_id},
    )


def _request_id(request: web.Request) -> str:
    return request_id(request.headers.get("X-Request-Id"))


def request_id(given: str | None) -> str:
    """The client's X-Request-Id when it is well formed, else a new one: 16 hex digits, from a random start per
    process counting up (unique within the process, unguessable across processes, no system call per push)."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"{(_REQUEST_ID_BASE + next(_REQUEST_COUNT)) & _REQUEST_ID_MASK:016x}"


_REQUEST_ID_MASK = 2**64 - 1
_REQUEST_ID_BASE = secrets.randbits(64)
_REQUEST_COUNT = itertools.count()


# -- exposition and health ---------------------------------------------------------------------


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    """GET /metrics: Prometheus text format, or OpenMetrics when the scraper asks for it. Streamed, family by
    family, with pauses while the vehicles' text is brought up to date: a scrape of any fleet never holds the
    event loop for longer than one slice (slices.SLICE_S) or one family until its pause budget is spent; for the
    first half of that budget its next slice waits for a turn of the loop that pushes left room in (slices.pause)."""
    rt = request.app[RUNTIME]
    encoder, content_type = negotiate(request.headers.get("Accept", ""))
    if request.method == "HEAD":  # the headers alone: a streamed body must not follow them
        return web.Response(headers={"Content-Type": content_type})
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    started = time.perf_counter()
    pausing_until = started + METRICS_PAUSE_BUDGET_S
    quiet_until = started + METRICS_PAUSE_BUDGET_S / 2  # then a slice in every turn, for the rest of the budget
    pieces = rt.exposition.chunks(encoder, content_type)
    for piece in pieces:  # pauses and families: pushes go on in between, and first
        if time.perf_counter() >= pausing_until:  # the rest in one piece and one write (one wait for the scraper)
            await response.write((piece + "".join(pieces)).encode())
            break
        if piece:
            await response.write(piece.encode())
        await slices.pause(quiet_until)
    await response.write_eof()
    return response


METRICS_PAUSE_BUDGET_S = 5.0
"""How long a scrape lets pushes run in its pauses and writes: for its first half a slice waits for a quiet turn
of the loop (slices.pause), then takes one turn each; past it, the rest is rendered and written in one piece. An
overloaded aggregator (more pushes ready at every turn of the loop than it can take) would otherwise starve the
scrape past Prometheus's scrape_timeout (10 s by default) and turn every vehicle's series stale; half of that
timeout leaves the other half for the rest. Near saturation a 5,000-vehicle scrape takes 1-5 s in its pauses
(docs/benchmarks.md)."""


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"alive": True})


BALANCER_QUERY = ("for", "balancer")
"""`/readyz?for=balancer`: the check a load balancer routes by (config/haproxy/haproxy.cfg)."""


async def handle_readyz(request: web.Request) -> web.Response:
    """Ready once config is loaded and state restored; 503 while the state file cannot be written.

    `?for=balancer` leaves the state file out: a shard whose disk fails still serves pushes from memory, and
    ejecting it would turn its vehicles invisible (its replica alone would carry them, or nobody)."""
    rt = request.app[RUNTIME]
    for_balancer = request.query.get(BALANCER_QUERY[0]) == BALANCER_QUERY[1]
    ready = rt.ready and (for_balancer or rt.state_error is None)
    body = {
        "ready": ready,
        "state_restored": rt.ready,
        "persistence": "off" if rt.state_file is None else ("failing: " + rt.state_error if rt.state_error else "ok"),
        "vehicles": len(rt.fleet),
        "shard": rt.config.shard.name if rt.config.shard is not None else None,
    }
    return web.json_response(body, status=200 if ready else 503)


# -- operator views (logic in fleet_view.py, HTML in status_page.py) ------------------------------

_NO_CACHE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


async def handle_status_page(request: web.Request) -> web.Response:
    """GET /: the fleet on one HTML page, worst first, for operators without Grafana."""
    rt = request.app[RUNTIME]
    view = build_view(rt.fleet, rt.geofence, rt.events.last_events)
    page = render_status_page(view, render_map(rt.geofence.zones, view.rows))
    headers = {**_NO_CACHE, "Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}
    return web.Response(text=page, content_type="text/html", charset="utf-8", headers=headers)


async def handle_vehicles(request: web.Request) -> web.Response:
    """GET /api/v1/vehicles: the status page's rows as JSON (heartbeat_age_s null = never heard from)."""
    rt = request.app[RUNTIME]
    return web.json_response(build_view(rt.fleet, rt.geofence, rt.events.last_events).to_json(), headers=_NO_CACHE)


async def handle_zones(request: web.Request) -> web.Response:
    """GET /api/v1/zones: the geofence zones in force, as the GeoJSON FeatureCollection the file gave (empty
    while geofencing is off)."""
    zones = request.app[RUNTIME].geofence.zones
    return web.json_response(zones.to_geojson(), content_type="application/geo+json", headers=_NO_CACHE)


READ_PROTECTED: dict[str, Handler] = {
    "/metrics": handle_metrics,
    "/": handle_status_page,
    VEHICLES_PATH: handle_vehicles,
    ZONES_PATH: handle_zones,
}
"""What `read_auth` guards, when configured: every page carrying fleet data (positions included)."""
