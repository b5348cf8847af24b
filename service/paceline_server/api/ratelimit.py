"""REST's face of the rate limit (transport/ratelimit.py; off unless
`PACELINE_RATE_LIMIT_PER_S` is set): 429 `RATE_LIMITED` with `Retry-After`.

A pure ASGI middleware rather than a dependency: a refused request costs no body read, no
parsing and no database round trip. `/v1` and the dashboard's data calls (`/ui/api/`,
which check tokens and read the database as `/v1` does) are limited: the probes,
/metrics, the dashboard's page and assets and the docs are not.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from paceline_server.api.errors import render
from paceline_server.api.middleware import HttpMiddleware
from paceline_server.domain.errors import RateLimited
from paceline_server.transport.ratelimit import RateLimiter, TokenBuckets

__all__ = ["RateLimitMiddleware", "TokenBuckets"]


def _is_api(path: str) -> bool:
    """A call that reads or writes data: `/v1`, and the dashboard's `/ui/api/` (its
    overview costs a query per curriculum listed; unlimited, it also let unknown tokens
    be guessed at any rate)."""
    return path == "/v1" or path.startswith(("/v1/", "/ui/api/"))


class RateLimitMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        super().__init__(app)
        self.limiter = limiter

    def wants(self, scope: Scope) -> bool:
        return super().wants(scope) and _is_api(scope["path"])

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = next((value for name, value in scope.get("headers", ())
                              if name == b"authorization"), None)
        client = scope.get("client")
        try:
            self.limiter.check(authorization, client[0] if client else None)
        except RateLimited as error:
            await render(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
