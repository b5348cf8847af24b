"""One table from stable error codes to HTTP and gRPC status (as MLflow does), and the
handlers that render every REST error as `{"error": {"code", "message", "details"}}`.

The gRPC transport reads the same table (`grpc_status_of`), so both transports always
agree on what an error means. gRPC codes are kept as `grpc.StatusCode` names so this
module needs no gRPC import.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Literal, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from paceline_server.domain import errors

GrpcCode = Literal["INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "ABORTED",
                   "FAILED_PRECONDITION", "UNAUTHENTICATED", "PERMISSION_DENIED",
                   "RESOURCE_EXHAUSTED", "DATA_LOSS", "UNAVAILABLE", "INTERNAL"]

logger = logging.getLogger("paceline_server.api")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Status(NamedTuple):
    http: int
    grpc: GrpcCode


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
    errors.MalformedBody: Status(400, "INVALID_ARGUMENT"),
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
    errors.SchemaOutdated: Status(503, "FAILED_PRECONDITION"),
    errors.Unavailable: Status(503, "UNAVAILABLE"),
}
UNLISTED = Status(500, "INTERNAL")

#: code -> HTTP status (the REST view of `TABLE`).
STATUS: dict[type[errors.PacelineError], int] = {cls: s.http for cls, s in TABLE.items()}


def _lookup(error: errors.PacelineError) -> Status:
    for cls in type(error).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return UNLISTED


def status_of(error: errors.PacelineError) -> int:
    """The HTTP status of the most specific class in the table (500 when unlisted)."""
    return _lookup(error).http


def grpc_status_of(error: errors.PacelineError) -> GrpcCode:
    """The gRPC status name of the most specific class in the table (INTERNAL when
    unlisted)."""
    return _lookup(error).grpc


def retryable(error: errors.PacelineError) -> bool:
    """Whether the same request may succeed later (both transports add a retry-after)."""
    return status_of(error) == 503 and not isinstance(error, errors.SchemaOutdated)


def error_body(code: str, message: str, details: dict[str, object] | None = None
               ) -> dict[str, object]:
    """The error envelope. Details echo user input at times (a key, a value), which need
    not be JSON (msgpack bytes, NaN): rendering an error must never fail, so anything JSON
    cannot hold is sent as its text."""
    return {"error": {"code": code, "message": message, "details": _jsonable(details or {})}}


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, str | int):
        return value
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _jsonable(item())
    return str(value)


def render(error: errors.PacelineError,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The response for a domain error (also used by middlewares, which run outside the
    exception handlers)."""
    status = status_of(error)
    extra = {"Retry-After": "1"} if retryable(error) else {}
    if status == 401:
        extra = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(error.code, error.message, error.details), status,
                        headers={**extra, **(headers or {})})


def _allowed_methods(request: Request) -> str:
    """Every method served at the request's path. (Starlette's 405 names only the methods
    of the first route that matched the path, not those of its siblings.) Each method is
    tried against the router's own matching, so routers included in any way count."""
    allowed = [method for method in HTTP_METHODS
               if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                      for route in request.app.router.routes)]
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.PacelineError)
    async def _domain(request: Request, exc: errors.PacelineError) -> JSONResponse:
        if status_of(exc) >= 500:
            # Operators must see these. Method and path only: no query string and no
            # headers, so a bearer token never reaches a log line.
            logger.warning("%s %s failed: %s: %s", request.method, request.url.path,
                           exc.code, exc.message)
            health = getattr(request.app.state, "storage_health", None)
            if health is not None:
                health.failed(exc)
        return render(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A bug: still answer in the API's error format. (Starlette re-raises the
        exception afterwards, so the server logs its traceback.)"""
        return JSONResponse(error_body("INTERNAL", "internal error"), 500)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(e.get("loc", ())), "message": e.get("msg", "")}
                    for e in exc.errors()]
        first = problems[0] if problems else {"loc": [], "message": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            error_body("INVALID_REQUEST", f"{where}: {first['message']}",
                       {"errors": problems}), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400 is FastAPI's answer to a body it could not parse (e.g. nested too deeply).
        code = {400: "MALFORMED_BODY", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
                }.get(exc.status_code, "HTTP_ERROR")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code,
                            headers=headers or None)
