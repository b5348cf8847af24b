"""The base of REST's middlewares: pure ASGI (Starlette's BaseHTTPMiddleware wraps every
response in a stream and a task, which cost more than the report handler's own work),
acting on the requests `wants` picks and passing anything else (lifespan events, other
requests) straight through."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def wants(self, scope: Scope) -> bool:
        """Whether this middleware acts on the request (every HTTP one by default)."""
        return bool(scope["type"] == "http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.wants(scope):
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request this middleware wants."""
        raise NotImplementedError
