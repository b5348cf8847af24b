"""One table from stable error codes to HTTP and gRPC status (as MLflow does), and the
handlers that render every REST error as `{"error": {"code", "message", "details"}}`.

The gRPC transport reads the same table (`grpc_status_of`), so both transports always
agree on what an error means. gRPC codes are kept as `grpc.StatusCode` names so this
module needs no gRPC import.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from paceline_server.domain import errors

GrpcCode = Literal["INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "ABORTED",
                   "FAILED_PRECONDITION", "UNAUTHENTICATED", "PERMISSION_DENIED",
                   "DATA_LOSS", "UNAVAILABLE", "INTERNAL"]


class Status(NamedTuple):
    http: int
    grpc: GrpcCode


#: The one table. A gRPC code that generic clients retry (UNAVAILABLE) is used only where
#: a retry can help; an outdated schema is FAILED_PRECONDITION although REST says 503.
TABLE: dict[type[errors.PacelineError], Status] = {
    errors.InvalidSpec: Status(422, "INVALID_ARGUMENT"),
    errors.UnknownStrategy: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidParams: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidReport: Status(422, "INVALID_ARGUMENT"),
    errors.IndexOutOfRange: Status(422, "INVALID_ARGUMENT"),
    errors.InvalidRequest: Status(422, "INVALID_ARGUMENT"),
    errors.MalformedBody: Status(400, "INVALID_ARGUMENT"),
    errors.PayloadTooLarge: Status(413, "INVALID_ARGUMENT"),
    errors.UnsupportedMediaType: Status(415, "INVALID_ARGUMENT"),
    errors.NotFound: Status(404, "NOT_FOUND"),
    errors.CurriculumNotFound: Status(404, "NOT_FOUND"),
    errors.RunNotFound: Status(404, "NOT_FOUND"),
    errors.Conflict: Status(409, "ABORTED"),
    errors.CurriculumExists: Status(409, "ALREADY_EXISTS"),
    errors.IdempotencyConflict: Status(409, "FAILED_PRECONDITION"),
    errors.Unauthenticated: Status(401, "UNAUTHENTICATED"),
    errors.Forbidden: Status(403, "PERMISSION_DENIED"),
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
    return {"error": {"code": code, "message": message, "details": details or {}}}


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.PacelineError)
    async def _domain(request: Request, exc: errors.PacelineError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": "1"} if retryable(exc) else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status,
                            headers=headers)

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
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code,
                            headers=getattr(exc, "headers", None))
