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
    `CONNECTION_ERROR`), `status` the HTTP status (None when no response came back)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None,
                 status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.status = status

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
                f"status={self.status!r})")


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
    """No HTTP response: the connection failed or timed out (after the retries)."""


#: The one table of the service's stable codes: the exception each raises and the HTTP
#: status the service answers it with (the embedded mode, which has no HTTP answer to
#: read, takes the status from here; a test checks it against the service's own table).
_CODES: dict[str, tuple[type[PacelineError], int]] = {
    "NOT_FOUND": (NotFound, 404), "CURRICULUM_NOT_FOUND": (NotFound, 404),
    "RUN_NOT_FOUND": (NotFound, 404),
    "CONFLICT": (Conflict, 409), "CURRICULUM_EXISTS": (Conflict, 409),
    "IDEMPOTENCY_CONFLICT": (Conflict, 409), "REPORT_CONFLICT": (Conflict, 409),
    "NOT_SERVED": (Conflict, 409), "INDICES_NOT_SERVED": (Conflict, 409),
    "STEP_ALREADY_REPORTED": (Conflict, 409), "REFILL_OUT_OF_ORDER": (Conflict, 409),
    "INVALID_SPEC": (InvalidInput, 422), "UNKNOWN_STRATEGY": (InvalidInput, 422),
    "INVALID_PARAMS": (InvalidInput, 422), "STATE_TOO_LARGE": (InvalidInput, 422),
    "INVALID_REPORT": (InvalidInput, 422), "INDEX_OUT_OF_RANGE": (InvalidInput, 422),
    "INVALID_REQUEST": (InvalidInput, 422), "HISTORY_OUT_OF_RANGE": (InvalidInput, 422),
    "INVALID_DOWNSAMPLING": (InvalidInput, 422), "REFILL_TOO_LARGE": (InvalidInput, 422),
    "MALFORMED_BODY": (InvalidInput, 400), "PAYLOAD_TOO_LARGE": (InvalidInput, 413),
    "UNSUPPORTED_MEDIA_TYPE": (InvalidInput, 415),
    "METHOD_NOT_ALLOWED": (InvalidInput, 405),
    "UNAUTHENTICATED": (AuthError, 401), "FORBIDDEN": (AuthError, 403),
    "RATE_LIMITED": (Unavailable, 429), "STATE_CORRUPT": (Unavailable, 500),
    "INTERNAL": (Unavailable, 500), "SCHEMA_OUTDATED": (Unavailable, 503),
    "UNAVAILABLE": (Unavailable, 503),
}

_BY_STATUS: dict[int, type[PacelineError]] = {
    400: InvalidInput, 401: AuthError, 403: AuthError, 404: NotFound, 405: InvalidInput,
    408: Unavailable, 409: Conflict, 413: InvalidInput, 415: InvalidInput,
    422: InvalidInput, 429: Unavailable,
}


def status_for(code: str) -> int:
    """The HTTP status the service answers an error code with (500 for a code this
    client does not know)."""
    known = _CODES.get(code)
    return 500 if known is None else known[1]


def error_class(code: str, status: int | None) -> type[PacelineError]:
    """The class for a code; unknown codes (a newer server, a proxy) fall back on the
    status so that callers still get the right family."""
    if code in _CODES:
        return _CODES[code][0]
    if status is not None:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        if status >= 500:
            return Unavailable
    return PacelineError


def error_from_response(status: int, body: Any, text: str = "") -> PacelineError:
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
    return error_class(code, status)(code, message, details, status)
