"""FastAPI dependencies: the operation layer, the service object and bearer-token
scopes (transport/auth.py).

All are `async def` although none awaits: FastAPI runs a plain `def` dependency in the
threadpool, and three thread hand-offs per request cost more CPU than the work itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from paceline_server.app.operations import Operations
from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.transport.auth import Scope, require, scope_of


async def get_service(request: Request) -> PacelineService:
    service: PacelineService = request.app.state.service
    return service


async def get_operations(request: Request) -> Operations:
    operations: Operations = request.app.state.operations
    return operations


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _scope(request: Request, settings: Settings) -> Scope:
    return scope_of(request.headers.get("authorization"), settings)


async def require_read(request: Request,
                 settings: Annotated[Settings, Depends(get_settings)]) -> str:
    return _scope(request, settings)


async def require_write(request: Request) -> str:
    return write_scope(request)


def write_scope(request: Request) -> str:
    """The `WriteScope` check, also called by a route that solves no dependencies (the
    report route)."""
    settings: Settings = request.app.state.settings
    return require("write", _scope(request, settings))


Service = Annotated[PacelineService, Depends(get_service)]
Ops = Annotated[Operations, Depends(get_operations)]
ReadScope = Annotated[str, Depends(require_read)]
WriteScope = Annotated[str, Depends(require_write)]
