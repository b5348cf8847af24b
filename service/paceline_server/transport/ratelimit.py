"""Per-client rate limiting, the same on every transport (off unless
`PACELINE_RATE_LIMIT_PER_S` is set).

A token bucket per bearer token, or per client address when authentication is off or the
call carries no known token (so guessing tokens is throttled too). Each call takes one
token; the bucket refills at `rate_limit_per_s` up to `rate_limit_burst`. A refused call
is `RATE_LIMITED` (429 over REST, RESOURCE_EXHAUSTED over gRPC) with a retry-after in
whole seconds, rounded up, which the client SDK honours on both transports.

One `RateLimiter` serves both transports of a `serve` process, so a client cannot double
its budget by calling over REST and gRPC at once. Buckets live in the process (with
several workers each keeps its own), in a bounded LRU map so that many addresses cannot
exhaust memory; a lock keeps them consistent under gRPC's thread pool.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from paceline_server.domain.errors import RateLimited
from paceline_server.settings import Settings
from paceline_server.transport.auth import bearer_token, known_token
from paceline_server.transport.errors import whole_seconds

__all__ = ["MAX_CLIENTS", "RateLimiter", "TokenBuckets", "peer_host"]

#: Clients (tokens and addresses) whose buckets are kept; the least recently seen go first.
MAX_CLIENTS = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """One token bucket per key; safe to share between threads."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token: 0.0 when the call may go ahead, else the seconds until the
        bucket holds a token again."""
        with self._lock:
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


class RateLimiter:
    """The settings' limit over one set of buckets, keyed as the module says."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        if settings.rate_limit_per_s is None:
            raise ValueError("RateLimiter needs settings.rate_limit_per_s")
        self.rate = settings.rate_limit_per_s
        self.burst = settings.rate_limit_burst or max(1, math.ceil(self.rate))
        self.tokens = tuple(settings.api_tokens)
        self.buckets = TokenBuckets(self.rate, self.burst, clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter the settings ask for, None when rate limiting is off."""
        return None if settings.rate_limit_per_s is None else cls(settings)

    def client_key(self, authorization: str | bytes | None, address: str | None) -> str:
        """A call's bucket: its token when it names a known one (compared in constant
        time, as in authentication), else the client's address."""
        token = bearer_token(authorization)
        known = None if token is None else known_token(token, self.tokens)
        if known is not None:
            return f"token:{known}"
        return f"addr:{address or 'unknown'}"

    def check(self, authorization: str | bytes | None, address: str | None) -> None:
        """Take a token for the call, or raise `RateLimited` saying when to come back
        (`details.retry_after_s`; `transport.errors.retry_after` gives the header)."""
        wait = self.buckets.take(self.client_key(authorization, address))
        if wait <= 0.0:
            return
        raise RateLimited(
            f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; "
            f"retry in {whole_seconds(wait)} s",
            {"retry_after_s": round(wait, 3), "limit_per_s": self.rate, "burst": self.burst})


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`,
    `unix:/path`), the key REST takes from the client address. grpcio percent-encodes
    the brackets of an IPv6 peer (`ipv6:%5B::1%5D:5000`): read as it came, the key held
    the port, so each new connection of a client had a fresh bucket."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        rest = unquote(rest)
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:rest.find("]")] if "]" in rest else rest
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return peer
