"""Exceptions raised by the client, one class per kind of failure a caller handles
differently; the service's stable error `code` is kept so callers can branch on it."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "PacelineError",
    "TransportError",
    "Unavailable",
    "error_from_response",
]


class PacelineError(Exception):
    """Base class. `code` is the service's stable error code (or a client-side one such as
    `CONNECTION_ERROR`), `status` the HTTP status (None when no response came back),
    `request_id` the id the call was sent under (the service names it in its log lines
    about the call; None where nothing was sent)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None,
                 status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.status = status
        self.request_id = request_id

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
                f"status={self.status!r}, request_id={self.request_id!r})")


class NotFound(PacelineError, LookupError):
    """The curriculum, run or route does not exist."""


class Conflict(PacelineError):
    """The request contradicts stored state: a curriculum of that name with another spec,
    an idempotency key reused for a different report, a step re-served with another size."""


class InvalidInput(PacelineError, ValueError):
    """The spec, report or request is malformed; retrying the same request cannot help."""


class AuthError(PacelineError):
    """Missing or unknown token (401), or a read-only token used to write (403)."""


class Unavailable(PacelineError):
    """The service (or its database) is temporarily unavailable or failed internally."""


class TransportError(PacelineError):
    """No usable HTTP response: the connection failed or timed out (after the retries),
    or the answer could not be read (a body that does not decode)."""


#: Each stable code of the service, and the exception it raises.
_BY_CODE: dict[str, type[PacelineError]] = {
    **dict.fromkeys(("CURRICULUM_NOT_FOUND", "RUN_NOT_FOUND", "NOT_FOUND"), NotFound),
    **dict.fromkeys(("CONFLICT", "CURRICULUM_EXISTS", "IDEMPOTENCY_CONFLICT",
                     "REPORT_CONFLICT", "NOT_SERVED", "INDICES_NOT_SERVED",
                     "STEP_ALREADY_REPORTED", "REFILL_OUT_OF_ORDER"), Conflict),
    **dict.fromkeys(("INVALID_SPEC", "UNKNOWN_STRATEGY", "INVALID_PARAMS", "STATE_TOO_LARGE",
                     "INVALID_REPORT", "INDEX_OUT_OF_RANGE", "INVALID_REQUEST",
                     "MALFORMED_BODY", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE",
                     "METHOD_NOT_ALLOWED", "HISTORY_OUT_OF_RANGE", "INVALID_DOWNSAMPLING",
                     "INVALID_PAGE_TOKEN", "REFILL_TOO_LARGE", "HOST_NOT_ALLOWED"),
                    InvalidInput),
    **dict.fromkeys(("UNAUTHENTICATED", "FORBIDDEN"), AuthError),
    **dict.fromkeys(("UNAVAILABLE", "SCHEMA_OUTDATED", "STATE_CORRUPT", "INTERNAL",
                     "STRATEGY_ERROR", "RATE_LIMITED"), Unavailable),
}

_BY_STATUS: dict[int, type[PacelineError]] = {
    400: InvalidInput, 401: AuthError, 403: AuthError, 404: NotFound, 405: InvalidInput,
    408: Unavailable, 409: Conflict, 413: InvalidInput, 415: InvalidInput,
    421: InvalidInput, 422: InvalidInput, 429: Unavailable,
}


def error_class(code: str, status: int | None) -> type[PacelineError]:
    """The class for a code; unknown codes (a newer server, a proxy) fall back on the
    status so that callers still get the right family."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status is not None:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        if status >= 500:
            return Unavailable
    return PacelineError


def error_from_response(status: int, body: Any, text: str = "",
                        request_id: str | None = None) -> PacelineError:
    """Build the exception for an error response. The service sends
    `{"error": {"code", "message", "details"}}`; anything else (a proxy's HTML page) still
    gives an error with code `HTTP_<status>` and the start of the text."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
        details = error.get("details")
        details = details if isinstance(details, dict) else {}
    else:
        code, message, details = f"HTTP_{status}", (text.strip()[:500] or f"HTTP {status}"), {}
    return error_class(code, status)(code, message, details, status, request_id)
