"""Helpers for the client tests: a service process, a sample spec, and fault-injecting
httpx transports that sit between the client and a real service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api_support import ServiceProcess, running_service
from api_support import free_port as free_port  # re-exported for the client tests

SPEC: dict[str, Any] = {
    "distributions": [{"name": "easy", "size": 60}, {"name": "hard", "size": 40}],
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "uniform",
    "weighting": {"kind": "fixed", "weights": [3, 1]},
    "batch_size": 8,
    "seed": 1,
}


@contextmanager
def start_service(db: Path, **env: str) -> Iterator[ServiceProcess]:
    """`python -m paceline_server serve` on a free port and a SQLite file, ready when
    /readyz answers; shut down gracefully on exit."""
    with running_service(f"sqlite:///{db}", env=env, graceful=True) as service:
        yield service


@asynccontextmanager
async def asgi_service(db: Path) -> AsyncIterator[httpx.AsyncBaseTransport]:
    """The service's ASGI app on a SQLite file, reached through httpx's in-process ASGI
    transport (its lifespan run around it): HTTP requests without a process, for tests
    of the HTTP client's own behaviour (retries) on the event loop."""
    from paceline_server.api.app import create_app
    from paceline_server.settings import Settings

    app = create_app(Settings(database_url=f"sqlite:///{db}", auto_migrate=True,
                              api_tokens={}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            yield transport
        finally:
            await transport.aclose()


# ----------------------------------------------------------------- fault injection
@dataclass(frozen=True)
class Fault:
    """What to do to the next request whose path ends with `path`:
    - `status`: answer this status without forwarding (the service never sees it);
    - `lost`: forward it (the service applies it), then lose the answer: reply `status`
      if given, else raise a read timeout;
    - `connect`: raise a connection error without forwarding."""

    path: str
    kind: str  # "status" | "lost" | "connect"
    status: int | None = None
    retry_after: str | None = None


def status(path: str, code: int, retry_after: str | None = None) -> Fault:
    return Fault(path, "status", code, retry_after)


def lost(path: str, code: int | None = None) -> Fault:
    return Fault(path, "lost", code)


def connect_error(path: str) -> Fault:
    return Fault(path, "connect")


def _fake(fault: Fault, request: httpx.Request) -> httpx.Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    assert fault.status is not None
    return httpx.Response(fault.status, headers=headers, request=request, json={
        "error": {"code": "UNAVAILABLE", "message": "injected", "details": {}}})


@dataclass
class _Plan:
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)

    def take(self, request: httpx.Request) -> Fault | None:
        self.seen.append((request.method, request.url.path))
        for i, fault in enumerate(self.faults):
            if request.url.path.endswith(fault.path):
                return self.faults.pop(i)
        return None

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.seen if p.endswith(path))


class FaultInjector(httpx.BaseTransport):
    """A transport in front of `inner` that misbehaves as planned, then passes through."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.plan = _Plan()

    def inject(self, *faults: Fault) -> None:
        self.plan.faults.extend(faults)

    def count(self, path: str) -> int:
        return self.plan.count(path)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.take(request)
        if fault is None:
            return self.inner.handle_request(request)
        if fault.kind == "connect":
            raise httpx.ConnectError("injected connection failure", request=request)
        if fault.kind == "lost":
            response = self.inner.handle_request(request)
            response.read()
            response.close()
            if fault.status is None:
                raise httpx.ReadTimeout("injected: answer lost", request=request)
        return _fake(fault, request)

    def close(self) -> None:
        self.inner.close()


class AsyncFaultInjector(httpx.AsyncBaseTransport):
    """The asyncio twin of `FaultInjector`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.plan = _Plan()

    def inject(self, *faults: Fault) -> None:
        self.plan.faults.extend(faults)

    def count(self, path: str) -> int:
        return self.plan.count(path)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.take(request)
        if fault is None:
            return await self.inner.handle_async_request(request)
        if fault.kind == "connect":
            raise httpx.ConnectError("injected connection failure", request=request)
        if fault.kind == "lost":
            response = await self.inner.handle_async_request(request)
            await response.aread()
            await response.aclose()
            if fault.status is None:
                raise httpx.ReadTimeout("injected: answer lost", request=request)
        return _fake(fault, request)

    async def aclose(self) -> None:
        await self.inner.aclose()
