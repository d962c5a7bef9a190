"""Typed refusals: each reason a push can be refused for is one class here, with its HTTP status.

A class that names its own `reason` registers it in REFUSALS; `REJECTION_REASONS` lists them all, in the order defined,
and is what the aggregator exports as `telemetry_snapshots_rejected_total{reason}` (every reason from 0).
Base classes (`TelemetryError`, `LimitExceeded`) group refusals and are never raised themselves.
"""

from __future__ import annotations

from typing import ClassVar

REFUSALS: dict[str, type[TelemetryError]] = {}
"""reason -> the class that is refused for it, filled as the classes below are defined."""


class TelemetryError(Exception):
    """A push that is refused. `reason` is a short stable token (a metric label); `detail` is for humans."""

    status: ClassVar[int] = 400
    reason: ClassVar[str] = "bad_request"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" in cls.__dict__:
            taken = REFUSALS.setdefault(cls.reason, cls)
            if taken is not cls:
                raise TypeError(f"reason {cls.reason!r} is already {taken.__name__}'s")

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_json(self) -> dict[str, str]:
        """The JSON error body sent to the client."""
        return {"error": self.reason, "detail": self.detail}


class MalformedBody(TelemetryError):
    """The body is not a decodable msgpack map."""

    status = 400
    reason = "malformed"


class SchemaError(TelemetryError):
    """The body decodes but breaks schema v1 (wrong type, missing key, bad pattern, over-long string)."""

    status = 422
    reason = "schema"


class NonFinite(SchemaError):
    """NaN or ±Inf where a number is expected."""

    reason = "non_finite"


class OutOfRange(SchemaError):
    """A number outside the range its field allows."""

    reason = "out_of_range"


class UnsupportedVersion(TelemetryError):
    """The `v` field names a schema version this aggregator does not speak."""

    status = 422
    reason = "unsupported_version"


class LimitExceeded(TelemetryError):
    """A cardinality guard (the subclasses say which)."""

    status = 422


class TooManySensors(LimitExceeded):
    reason = "limit_sensors"


class TooManyErrorCodes(LimitExceeded):
    reason = "limit_error_codes"


class TooManyEvents(LimitExceeded):
    """A push carrying more vehicle events than `limits.max_events_per_push`."""

    reason = "limit_events"


class TooManyVehicles(LimitExceeded):
    """One more vehicle outside the roster than the aggregator tracks."""

    reason = "limit_vehicles"


class TooManySnapshots(LimitExceeded):
    """More snapshots in one history batch than `history.max_batch_snapshots` (the bridge halves its batch)."""

    status = 413
    reason = "limit_batch"


class BodyTooLarge(TelemetryError):
    status = 413
    reason = "too_large"


class BodyTimeout(TelemetryError):
    """The body did not arrive in time (a slow-body client)."""

    status = 408
    reason = "body_timeout"


class UnsupportedMediaType(TelemetryError):
    status = 415
    reason = "content_type"


class Unauthenticated(TelemetryError):
    """Missing or wrong bearer token."""

    status = 401
    reason = "unauthenticated"


class Forbidden(TelemetryError):
    """A valid credential that may not write this vehicle."""

    status = 403
    reason = "forbidden"


class UnknownVehicle(Forbidden):
    """A vehicle not on the roster while unknown vehicles are refused."""

    reason = "unknown_vehicle"


class RateLimited(TelemetryError):
    status = 429
    reason = "rate_limited"


class StaleBoot(TelemetryError):
    """A push from a boot the aggregator has already retired (older than the boots it tracks): taking it as a
    new boot would count its events twice and rewind the live values (docs/telemetry-protocol.md)."""

    status = 409
    reason = "stale_boot"


class RoutingMismatch(TelemetryError):
    """The `X-Vehicle-Id` routing header names another vehicle than the credential or the body."""

    status = 400
    reason = "routing_mismatch"


REJECTION_REASONS: tuple[str, ...] = tuple(REFUSALS)
"""Every `reason` a push can be refused for, in the order defined above."""
