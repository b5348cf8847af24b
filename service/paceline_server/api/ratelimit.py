"""Per-client rate limiting of the /v1 API (off unless `PACELINE_RATE_LIMIT_PER_S` is set).

A token bucket per bearer token, or per client address when authentication is off or the
request carries no known token (so guessing tokens is throttled too). Each request takes
one token; the bucket refills at `rate_limit_per_s` up to `rate_limit_burst`. A refused
request gets 429 `RATE_LIMITED` with `Retry-After` (whole seconds, rounded up), which the
client SDK honours.

A pure ASGI middleware rather than a dependency: a refused request costs no body read, no
parsing and no database round trip. Buckets live in this process (with several workers
each keeps its own), in a bounded LRU map so that many addresses cannot exhaust memory.
The probes, /metrics and the docs are not limited.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from paceline_server.api.errors import render
from paceline_server.domain.errors import RateLimited
from paceline_server.settings import Settings
from paceline_server.transport.auth import bearer_token, known_token

#: Clients (tokens and addresses) whose buckets are kept; the least recently seen go first.
MAX_CLIENTS = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """One token bucket per key. Not thread-safe: used from the event loop only."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token: 0.0 when the request may go ahead, else the seconds until the
        bucket holds a token again."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst),
                                bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def _is_api(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settings.rate_limit_per_s is None:
            raise ValueError("RateLimitMiddleware needs settings.rate_limit_per_s")
        self.app = app
        self.rate = settings.rate_limit_per_s
        self.burst = settings.rate_limit_burst or max(1, math.ceil(self.rate))
        self.tokens = tuple(settings.api_tokens)
        self.buckets = TokenBuckets(self.rate, self.burst, clock)

    def client_key(self, scope: Scope) -> str:
        """The bucket of a request: its token when it names a known one (compared in
        constant time, as in authentication), else the client address."""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                token = bearer_token(value)
                known = None if token is None else known_token(token, self.tokens)
                if known is not None:
                    return f"token:{known}"
                break
        client = scope.get("client")
        return f"addr:{client[0] if client else 'unknown'}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(self.client_key(scope))
        if wait <= 0.0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        error = RateLimited(
            f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; "
            f"retry in {retry_after} s",
            {"retry_after_s": round(wait, 3), "limit_per_s": self.rate, "burst": self.burst})
        response = render(error, {"Retry-After": str(retry_after)})
        await response(scope, receive, send)
