"""The ASGI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from paceline_server import __version__
from paceline_server.api import errors, metrics
from paceline_server.api.errors import error_body
from paceline_server.api.routes import router
from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.base import Store
from paceline_server.store.migrate import check_schema


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """Build the app. The store opens here (not at first request) so a schema that is
    behind stops the process at start with a message saying what to run."""
    settings = settings or Settings()
    owns_store = store is None
    store = store or open_store(settings.database_url, **settings.store_options())
    service = PacelineService(store, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_store:
            store.close()

    app = FastAPI(title="Paceline", version=__version__, lifespan=lifespan,
                  description="Curriculum and reward-weighting service for RL post-training.")
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics.Metrics(service, settings.metrics_max_distributions)
    errors.install(app)
    metrics.install(app, app.state.metrics)
    app.include_router(router)

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="The database is reachable and current")
    def readyz() -> Response:
        try:
            store.ping()
            check_schema(settings.database_url, store)
        except Exception as exc:
            code = getattr(exc, "code", "UNAVAILABLE")
            return JSONResponse(error_body(code, str(exc)), 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(app.state.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app
