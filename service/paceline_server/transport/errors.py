"""One table from each domain error to its HTTP status, its gRPC status and whether a
retry may help (as MLflow keeps one error table for its REST and gRPC faces), so both
transports always agree on what an error means.

gRPC codes are kept as `grpc.StatusCode` names, so this module needs no gRPC import.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from paceline_server.domain import errors

GrpcCode = Literal["INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "ABORTED",
                   "FAILED_PRECONDITION", "UNAUTHENTICATED", "PERMISSION_DENIED",
                   "RESOURCE_EXHAUSTED", "DATA_LOSS", "UNAVAILABLE", "INTERNAL"]


class Status(NamedTuple):
    http: int
    grpc: GrpcCode
    #: The same request may succeed later: both transports ask for a retry after a second.
    retryable: bool = False


class InternalError(errors.PacelineError):
    """An unexpected failure (a bug), answered in the error format like any other."""

    code = "INTERNAL"


#: The one table. A gRPC code that generic clients retry (UNAVAILABLE) is used only where
#: a retry can help; an outdated schema is FAILED_PRECONDITION although REST says 503.
TABLE: dict[type[errors.PacelineError], Status] = {
    errors.InvalidSpec: Status(422, "INVALID_ARGUMENT"),
    errors.UnknownStrategy: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidParams: Status(422, "INVALID_ARGUMENT"),
    errors.StateTooLarge: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidReport: Status(422, "INVALID_ARGUMENT"),
    errors.IndexOutOfRange: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidRequest: Status(422, "INVALID_ARGUMENT"),
    errors.HistoryOutOfRange: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidDownsampling: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidPageToken: Status(422, "INVALID_ARGUMENT"),
    errors.MalformedBody: Status(400, "INVALID_ARGUMENT"),
    errors.HostNotAllowed: Status(421, "INVALID_ARGUMENT"),  # REST only: Misdirected Request
    errors.PayloadTooLarge: Status(413, "INVALID_ARGUMENT"),
    errors.UnsupportedMediaType: Status(415, "INVALID_ARGUMENT"),
    errors.NotFound: Status(404, "NOT_FOUND"),
    errors.CurriculumNotFound: Status(404, "NOT_FOUND"),
    errors.RunNotFound: Status(404, "NOT_FOUND"),
    errors.Conflict: Status(409, "ABORTED"),
    errors.CurriculumExists: Status(409, "ALREADY_EXISTS"),
    errors.IdempotencyConflict: Status(409, "FAILED_PRECONDITION"),
    errors.ReportConflict: Status(409, "FAILED_PRECONDITION"),
    errors.NotServed: Status(409, "FAILED_PRECONDITION"),
    errors.IndicesNotServed: Status(409, "FAILED_PRECONDITION"),
    errors.StepAlreadyReported: Status(409, "FAILED_PRECONDITION"),
    errors.RefillOutOfOrder: Status(409, "FAILED_PRECONDITION"),
    errors.RefillTooLarge: Status(422, "INVALID_ARGUMENT"),
    errors.Unauthenticated: Status(401, "UNAUTHENTICATED"),
    errors.Forbidden: Status(403, "PERMISSION_DENIED"),
    errors.RateLimited: Status(429, "RESOURCE_EXHAUSTED"),
    errors.StateCorrupt: Status(500, "DATA_LOSS"),
    errors.StrategyError: Status(500, "INTERNAL"),
    errors.SchemaOutdated: Status(503, "FAILED_PRECONDITION"),
    errors.Unavailable: Status(503, "UNAVAILABLE", retryable=True),
    errors.StorageRefused: Status(503, "UNAVAILABLE", retryable=True),  # readiness notes it
}
UNLISTED = Status(500, "INTERNAL")

#: class -> HTTP status (the REST view of `TABLE`).
STATUS: dict[type[errors.PacelineError], int] = {cls: s.http for cls, s in TABLE.items()}


def lookup(error: errors.PacelineError) -> Status:
    """The row of the most specific class of `error` in the table (`UNLISTED` if none)."""
    for cls in type(error).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return UNLISTED


def status_of(error: errors.PacelineError) -> int:
    """The HTTP status of `error` (500 when unlisted)."""
    return lookup(error).http


def grpc_status_of(error: errors.PacelineError) -> GrpcCode:
    """The gRPC status name of `error` (INTERNAL when unlisted)."""
    return lookup(error).grpc


def retryable(error: errors.PacelineError) -> bool:
    """Whether the same request may succeed later (both transports add a retry-after)."""
    return lookup(error).retryable


def whole_seconds(wait: float) -> int:
    """A wait as a retry-after value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


def retry_after(error: errors.PacelineError) -> str | None:
    """The retry-after both transports send with `error` (REST's `Retry-After` header,
    gRPC's `retry-after` trailing metadata): a rate-limited call's own wait, a second
    for the table's retryable errors, none otherwise."""
    if isinstance(error, errors.RateLimited):
        wait = error.details.get("retry_after_s")
        if isinstance(wait, int | float) and math.isfinite(wait):
            return str(whole_seconds(wait))
    return "1" if retryable(error) else None
