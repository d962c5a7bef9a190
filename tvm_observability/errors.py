"""Typed ingest errors: each carries the HTTP status and the `reason` label it is counted under."""

from __future__ import annotations


class TelemetryError(Exception):
    """A push that is refused. `reason` is a short stable token (a metric label); `detail` is for humans."""

    status: int = 400
    reason: str = "bad_request"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason

    def to_json(self) -> dict[str, str]:
        """The JSON error body sent to the client."""
        return {"error": self.reason, "detail": self.detail}


class MalformedBody(TelemetryError):
    """The body is not a decodable msgpack map."""

    status = 400
    reason = "malformed"


class SchemaError(TelemetryError):
    """The body decodes but breaks schema v1 (wrong type, missing key, out of range, NaN/Inf)."""

    status = 422
    reason = "schema"


class UnsupportedVersion(TelemetryError):
    """The `v` field names a schema version this aggregator does not speak."""

    status = 422
    reason = "unsupported_version"


class LimitExceeded(TelemetryError):
    """A cardinality guard: too many sensors, error codes or vehicles."""

    status = 422
    reason = "limit"


class BodyTooLarge(TelemetryError):
    status = 413
    reason = "too_large"


class UnsupportedMediaType(TelemetryError):
    status = 415
    reason = "content_type"


class Unauthenticated(TelemetryError):
    """Missing or wrong bearer token."""

    status = 401
    reason = "unauthenticated"


class Forbidden(TelemetryError):
    """A valid credential that may not write this vehicle, or a vehicle not on the roster."""

    status = 403
    reason = "forbidden"


class RateLimited(TelemetryError):
    status = 429
    reason = "rate_limited"


class RoutingMismatch(TelemetryError):
    """The `X-Vehicle-Id` routing header names another vehicle than the credential or the body."""

    status = 400
    reason = "routing_mismatch"
