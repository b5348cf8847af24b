"""REST's rendering of errors: every error answers `{"error": {"code", "message",
"details"}}` with the HTTP status of the shared error table (transport/errors.py, which
gRPC reads too, so both transports always agree on what an error means).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from paceline_server.api.middleware import HttpMiddleware
from paceline_server.domain import errors
from paceline_server.domain.validation import has_control_characters
from paceline_server.transport import request_id
from paceline_server.transport.errors import (
    STATUS,
    TABLE,
    UNLISTED,
    GrpcCode,
    Status,
    grpc_status_of,
    retry_after,
    retryable,
    status_of,
)

# The table's names stay importable from here, where REST code has always read them.
__all__ = ["STATUS", "TABLE", "UNLISTED", "GrpcCode", "Status", "error_body",
           "grpc_status_of", "install", "render", "retryable", "status_of"]

logger = logging.getLogger("paceline_server.api")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error_body(code: str, message: str, details: dict[str, object] | None = None
               ) -> dict[str, object]:
    """The error envelope. Details echo user input at times (a key, a value), which need
    not be JSON (msgpack bytes, NaN) nor encodable (a lone surrogate decoded from JSON
    `"\\ud800"`): rendering an error must never fail, so anything JSON cannot hold is sent
    as its text, and a lone surrogate as its escape."""
    return {"error": {"code": code, "message": _text(message),
                      "details": _jsonable(details or {})}}


def _text(value: str) -> str:
    """`value`, with each lone surrogate (which UTF-8 cannot encode) as `\\udXXX`."""
    if has_control_characters(value):  # cheap: a regex search, only then re-encode
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {_text(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, int):
        return value
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _jsonable(item())
    return _text(str(value))


def render(error: errors.PacelineError,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The response for a domain error (also used by middlewares, which run outside the
    exception handlers)."""
    status = status_of(error)
    after = retry_after(error)
    extra = {} if after is None else {"Retry-After": after}
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


class UnexpectedErrors(HttpMiddleware):
    """The last answer to a bug (an exception no handler took): 500 INTERNAL in the API's
    error format, its traceback logged, and the connection kept. Starlette's own last
    resort answers too but then re-raises, and the server drops the keep-alive
    connection, so the client's next request on it failed as well. Installed innermost;
    a response already started cannot be replaced, and that exception goes on up."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            # Method and path only, as for the domain's 5xx: never a header or a query.
            logger.exception("%s %s failed: INTERNAL%s", scope["method"], scope["path"],
                             request_id.label())
            await JSONResponse(error_body("INTERNAL", "internal error"), 500)(
                scope, receive, send)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.PacelineError)
    async def _domain(request: Request, exc: errors.PacelineError) -> JSONResponse:
        if status_of(exc) >= 500:
            # Operators must see these. Method and path only: no query string and no
            # headers, so a bearer token never reaches a log line.
            logger.warning("%s %s failed: %s: %s%s", request.method, request.url.path,
                           exc.code, exc.message, request_id.label())
            health = getattr(request.app.state, "storage_health", None)
            if health is not None:
                health.failed(exc)
        return render(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A bug in a middleware outside `UnexpectedErrors`: still answer in the API's
        error format. (Starlette re-raises the exception afterwards, so the server logs
        its traceback.)"""
        return JSONResponse(error_body("INTERNAL", "internal error"), 500)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            # A body that is not JSON at all is malformed on every route, as the report
            # route (which parses its own body) and gRPC's spec_json have always said.
            return JSONResponse(error_body("MALFORMED_BODY", "the body is not valid JSON"),
                                400)
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
