"""REST's side of the request metrics (transport/metrics.py): an ASGI middleware that
counts and times every request by route template, with `transport="rest"`, and counts a
failed one by the stable error code of its answer."""

from __future__ import annotations

import time

import orjson
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paceline_server.api.middleware import HttpMiddleware
from paceline_server.transport.metrics import Metrics


class RequestMetrics(HttpMiddleware):
    """Pure ASGI middleware counting requests and timing them by route template.

    Not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware wraps every response
    in a stream and a task, which cost more than the report handler's own work.

    The error code is read from the answer's error envelope: errors are rendered by
    exception handlers, by middlewares (size limit, rate limit, storage health) and by
    Starlette itself (404, 405), and the envelope is the one thing they all share. Only
    error answers are read, so a successful request costs nothing more."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500
        code: str | None = None

        async def send_observed(message: Message) -> None:
            nonlocal status, code
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif status >= 400 and code is None:
                code = error_code(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            template = route_template(scope)
            if status >= 400 and code is None:
                code = "INTERNAL" if status >= 500 else f"HTTP_{status}"
            self.metrics.observe("rest", method_label(scope["method"]), template, status,
                                 time.perf_counter() - start, code)


#: The methods counted by name; any other is `other`. The method is the client's word:
#: uvicorn's default parser passes some forty (PROPFIND, MKCOL, ...), h11 any token, and
#: each new one made a series per route, as many as a client cared to invent.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The `method` label of a request: its method when it is a common one, else `other`."""
    return method if method in METHODS else "other"


def route_template(scope: Scope) -> str:
    """The template of the route that answered, `unmatched` when none did. FastAPI's
    routes put themselves in the scope; Starlette's plain ones (the API description:
    /openapi.json, /docs, /redoc) leave only their endpoint, whose route is looked up."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is not None and app is not None:
        for candidate in getattr(app, "routes", ()):
            if isinstance(candidate, Route) and candidate.endpoint is endpoint:
                return candidate.path
    return "unmatched"


def error_code(body: bytes) -> str | None:
    """The `error.code` of an error envelope, or None for any other body."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = envelope.get("error") if isinstance(envelope, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def install(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(RequestMetrics, metrics=metrics)
