"""FastAPI dependencies: the service object and bearer-token scopes.

All are `async def` although none awaits: FastAPI runs a plain `def` dependency in the
threadpool, and three thread hand-offs per request cost more CPU than the work itself.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from paceline_server.app.service import PacelineService
from paceline_server.domain.errors import Forbidden, Unauthenticated
from paceline_server.settings import Settings


async def get_service(request: Request) -> PacelineService:
    service: PacelineService = request.app.state.service
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _scope(request: Request, settings: Settings) -> str:
    if not settings.auth_enabled:
        return "write"
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
    for known, scope in settings.api_tokens.items():
        if hmac.compare_digest(known.encode(), token.strip().encode()):
            return scope
    raise Unauthenticated("unknown bearer token")


async def require_read(request: Request,
                 settings: Annotated[Settings, Depends(get_settings)]) -> str:
    return _scope(request, settings)


async def require_write(request: Request) -> str:
    return write_scope(request)


def write_scope(request: Request) -> str:
    """The `WriteScope` check, also called by a route that solves no dependencies (the
    report route)."""
    settings: Settings = request.app.state.settings
    scope = _scope(request, settings)
    if scope != "write":
        raise Forbidden("this token is read-only", {"scope": scope})
    return scope


Service = Annotated[PacelineService, Depends(get_service)]
ReadScope = Annotated[str, Depends(require_read)]
WriteScope = Annotated[str, Depends(require_write)]
