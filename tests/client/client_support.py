"""Helpers for the client tests: the service's ASGI app reached in process (the sample
spec, a service process and the fault-injecting transports are in `support`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx


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
