"""The ASGI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask

from paceline_server import __version__
from paceline_server.adapters.redis_coordination import coordinator_from_settings
from paceline_server.api import errors, metrics, ui
from paceline_server.api.body import BodyLimitMiddleware, JsonBodyMiddleware
from paceline_server.api.errors import error_body
from paceline_server.api.health import StorageHealth, StorageHealthMiddleware
from paceline_server.api.hosts import AllowedHosts
from paceline_server.api.origin import CrossSiteWrites
from paceline_server.api.ratelimit import RateLimitMiddleware
from paceline_server.api.request_ids import RequestIds
from paceline_server.api.routes import router
from paceline_server.api.schemas import ErrorResponse
from paceline_server.app.operations import Operations
from paceline_server.app.overview import Overview
from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.base import Store
from paceline_server.store.migrate import check_schema
from paceline_server.transport.metrics import Metrics
from paceline_server.transport.ratelimit import RateLimiter


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """Build the app. The store opens here (not at first request) so a schema that is
    behind stops the process at start with a message saying what to run."""
    settings = settings or Settings()
    owns_store = store is None
    store = store or open_store(settings.database_url, **settings.store_options())
    service = PacelineService(store, settings,
                              coordinator=coordinator_from_settings(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()
        if owns_store:
            store.close()

    docs: dict[str, Any] = {} if settings.api_docs else {
        "openapi_url": None, "docs_url": None, "redoc_url": None}
    app = FastAPI(title="Paceline", version=__version__, lifespan=lifespan,
                  description="Curriculum and reward-weighting service for RL post-training.",
                  **docs)
    app.state.settings = settings
    app.state.service = service
    app.state.operations = Operations(service)
    app.state.overview = Overview(service)  # the dashboard's list (api/ui.py)
    app.state.metrics = Metrics(service, settings.metrics_max_distributions)
    app.state.storage_health = StorageHealth(settings.storage_failure_hold_s)
    errors.install(app)
    # Innermost first; metrics (installed after the others) also counts the refusals, and
    # request ids (outermost) name every answer.
    app.add_middleware(errors.UnexpectedErrors)
    app.add_middleware(StorageHealthMiddleware, health=app.state.storage_health)
    app.add_middleware(JsonBodyMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(CrossSiteWrites)  # before any body is read (api/origin.py)
    hosts = settings.allowed_hosts  # None here: no address known, `serve` resolves it
    if hosts is not None and "*" not in hosts:
        app.add_middleware(AllowedHosts, patterns=hosts)  # api/hosts.py
    # One limiter per process: `serve` hands it to the gRPC server too (one budget).
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    if app.state.rate_limiter is not None:
        app.add_middleware(RateLimitMiddleware, limiter=app.state.rate_limiter)
    metrics.install(app, app.state.metrics)
    app.add_middleware(RequestIds)
    app.include_router(router)
    app.include_router(ui.router)  # the dashboard at /ui (api/ui.py)

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    not_ready: dict[int | str, dict[str, Any]] = {503: {"model": ErrorResponse}}

    @app.get("/readyz", tags=["ops"], responses=not_ready,
             summary="The database is reachable and current, and recent writes succeeded")
    def readyz() -> Response:
        try:
            store.ping()
            check_schema(settings.database_url, store, allow_newer=True)
        except Exception as exc:
            code = getattr(exc, "code", "UNAVAILABLE")
            return JSONResponse(error_body(code, str(exc)), 503)
        failure = app.state.storage_health.failure()
        if failure is not None:
            return JSONResponse(error_body(failure.code, failure.message, failure.details), 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics",
             response_class=PlainTextResponse)
    def prometheus() -> Response:
        # The series of curricula deleted through another replica go after answering:
        # that check reads the database, which a scrape must not wait on.
        return Response(generate_latest(app.state.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST,
                        background=BackgroundTask(app.state.metrics.drop_deleted))

    return app
