"""Readiness while a rolling upgrade replaces the replicas: the new release's migration
(a Helm pre-upgrade hook, or the first new pod's init container) runs while the old
release's pods still serve, and the Deployment (maxUnavailable 0) keeps those pods in
rotation only while their /readyz is green."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from api_support import make_client
from paceline_server.api.app import create_app
from paceline_server.domain.errors import SchemaOutdated
from paceline_server.settings import Settings
from paceline_server.store.migrate import head_revision
from support import SPEC


def set_revision(path: Path, revision: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE paceline_alembic_version SET version_num = ?", (revision,))
    conn.close()


def test_a_running_replica_stays_ready_when_a_newer_release_migrates(
        tmp_path: Path) -> None:
    """A schema a newer release migrated turned every running replica's /readyz red at
    once: all of them left the Service before any new pod was ready (and stayed out
    if the new release never became ready). A running replica keeps serving; only a
    start on such a database is refused, and a schema *behind* the code is still red."""
    path = tmp_path / "p.db"
    url = f"sqlite:///{path}"
    with make_client(url) as client:
        assert client.post("/v1/curricula", json=SPEC).status_code == 201
        set_revision(path, "9999_future")
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.get("/v1/curricula/math").status_code == 200
        set_revision(path, "0006")  # behind: this process cannot serve it
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "SCHEMA_OUTDATED"
        set_revision(path, head_revision())
    set_revision(path, "9999_future")
    with pytest.raises(SchemaOutdated, match="newer than this Paceline"):
        create_app(Settings(database_url=url, auto_migrate=False))
