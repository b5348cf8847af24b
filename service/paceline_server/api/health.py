"""Readiness that notices a database which answers reads but refuses writes.

`/readyz` pings the database, but a `SELECT 1` succeeds on a full disk, a read-only file
or a PostgreSQL server that refuses to extend a table. So the app also remembers the last
write that failed for a storage reason (an `Unavailable` error) and reports not-ready
until a later write succeeds, or for `storage_failure_hold_s` at most: after the hold the
probe turns green again so that a replica taken out of rotation gets traffic to prove
itself with (otherwise a pod that is never sent a write could never recover).

Only failures a successful ping cannot rule out count: the database refusing writes
(disk or quota full, a read-only file or transaction, an I/O error). A lost connection
does not (the ping sees it, and sees it heal), nor does lock contention (a writer that
timed out waiting for another). Only REST requests feed this; gRPC calls share the
database, so a storage failure shows on REST writes as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paceline_server.api.middleware import HttpMiddleware
from paceline_server.domain.errors import PacelineError, StorageRefused, Unavailable

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class StorageHealth:
    """The outcome of the latest storage write, as seen by this process."""

    def __init__(self, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self.clock = clock
        self._failure: PacelineError | None = None
        self._failed_at = 0.0

    def failed(self, error: PacelineError) -> None:
        """Remember a write the database refused (the store's `StorageRefused`, told by the
        database's error code); other 503s (a lost connection, a lock timeout, a race
        whose message quotes a curriculum's name) say nothing about the disk."""
        if isinstance(error, StorageRefused):
            self._failure, self._failed_at = error, self.clock()

    def succeeded(self) -> None:
        self._failure = None

    def failure(self) -> Unavailable | None:
        """The recent storage failure that should keep readiness red, if any."""
        failure = self._failure
        age = self.clock() - self._failed_at
        if failure is None or age >= self.hold_s:
            return None
        return Unavailable(f"the last write failed {age:.1f} s ago: {failure.message}",
                           {**failure.details, "failed_s_ago": round(age, 3)})


class StorageHealthMiddleware(HttpMiddleware):
    """Marks storage healthy again after a successful (2xx) write request; failures are
    recorded by the error handler, which sees the domain error."""

    def __init__(self, app: ASGIApp, health: StorageHealth) -> None:
        super().__init__(app)
        self.health = health

    def wants(self, scope: Scope) -> bool:
        return super().wants(scope) and scope["method"] in WRITE_METHODS

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.health.succeeded()
            await send(message)

        await self.app(scope, receive, watch)
