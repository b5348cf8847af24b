"""The embedded mode: the service's ASGI app in this process, on a SQLite file, reached
through httpx's in-process ASGI transport — the same code path as a remote service, with
no server to start. The server package is imported only here, only when asked for.

The async client drives the app on the caller's event loop; the sync client drives it on
a private event loop in a daemon thread (rather than through Starlette's TestClient, whose
httpx base is deprecated and which is a testing tool, not a runtime)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

BASE_URL = "http://paceline.embedded"


def build_app(path: str | os.PathLike[str] | None, settings: dict[str, Any]
              ) -> tuple[Any, Callable[[], None]]:
    """The app on `path` (a temporary file, removed at close, when None) and the cleanup
    to run after the app has shut down."""
    if importlib.util.find_spec("paceline_server") is None:
        raise ImportError(
            "Client.embedded() runs the Paceline service in this process and needs the "
            "server package `paceline_server` (pip install paceline); to talk to a running "
            "service use Client(url) instead")
    from paceline_server.api.app import create_app
    from paceline_server.settings import Settings

    tmpdir: str | None = None
    if path is None:
        tmpdir = tempfile.mkdtemp(prefix="paceline-")
        path = Path(tmpdir) / "paceline.db"
    db = Path(path).expanduser().resolve()
    # Hermetic about authentication: a token configured for some remote service in the
    # environment must not lock the caller out of their own in-process one.
    options: dict[str, Any] = {"database_url": f"sqlite:///{db}", "auto_migrate": True,
                               "api_tokens": {}, **settings}
    try:
        app = create_app(Settings(**options))
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise

    def cleanup() -> None:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    return app, cleanup


class LifespanASGITransport(httpx.AsyncBaseTransport):
    """`httpx.ASGITransport` that also runs the app's lifespan: started before the first
    request, shut down (closing the store) at `aclose`."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._inner = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._stack = AsyncExitStack()
        self._started = False
        self._lock = asyncio.Lock()

    async def _start(self) -> None:
        if self._started:
            return
        async with self._lock:
            if not self._started:
                await self._stack.enter_async_context(
                    self._app.router.lifespan_context(self._app))
                self._started = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._start()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._start()  # a never-used app still owns an open store
        try:
            await self._stack.aclose()
        finally:
            await self._inner.aclose()


class ThreadedASGITransport(httpx.BaseTransport):
    """A sync httpx transport for an ASGI app: each request runs as a coroutine on an
    event loop owned by a daemon thread, so sync callers (and the heartbeat thread) can
    share one in-process app."""

    def __init__(self, app: Any) -> None:
        self._inner = LifespanASGITransport(app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="paceline-embedded")
        self._thread.start()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the embedded service is closed", request=request)
        body = request.read()

        async def call() -> tuple[int, httpx.Headers, bytes]:
            inner = httpx.Request(request.method, request.url, headers=request.headers,
                                  content=body)
            response = await self._inner.handle_async_request(inner)
            content = await response.aread()
            return response.status_code, response.headers, content

        status, headers, content = asyncio.run_coroutine_threadsafe(
            call(), self._loop).result()
        # The content is already decoded; drop headers that would make httpx decode again.
        headers = httpx.Headers({k: v for k, v in headers.items()
                                 if k.lower() not in ("content-encoding", "content-length")})
        return httpx.Response(status, headers=headers, content=content, request=request)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._inner.aclose(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
