"""Helpers for API tests: the ASGI app on a database, driven in process (the shared
pieces, such as the sample spec and a real service process, are in `support`)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from paceline_server.api.app import create_app
from paceline_server.settings import Settings


def make_client(url: str, **settings: Any) -> TestClient:
    app = create_app(Settings(database_url=url, auto_migrate=True, **settings))
    return TestClient(app)
