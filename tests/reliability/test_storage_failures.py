"""The database fails underneath a running service: writes answer 503 `UNAVAILABLE` (with
Retry-After, so clients retry), `/readyz` turns red, no partial event is written, and the
service recovers by itself once the database does.

Honest simulations, no mocks:
- disk full on SQLite: every connection's database is capped at its current size with
  `PRAGMA max_page_count`, so SQLite itself fails the write with SQLITE_FULL ("database
  or disk is full"), exactly as on a full disk;
- a read-only PostgreSQL (as a standby after a failover): the service's sessions run
  with `default_transaction_read_only=on`, so the server refuses every write (25006);
- PostgreSQL unreachable: the service talks to the server through a TCP proxy that is
  unplugged (connections cut, new ones refused) and plugged back in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from reliability_support import tcp_proxy
from sqlalchemy import event

from paceline_server.api.app import create_app
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.sql import SqlStore
from support import PG_PORT, SPEC, postgres_url

URL = "/v1/curricula/math"


def report(step: int, prompts: int = 8, rollouts: int = 64) -> dict[str, Any]:
    """A report big enough to need new database pages (8 x 64 arbitrary doubles are
    stored as they are, 4 KiB; small integers would be stored as bytes)."""
    rng = np.random.default_rng(step)
    rewards = np.stack([rng.integers(0, 2, (prompts, rollouts)),
                        rng.random((prompts, rollouts)) * 100], axis=-1)
    return {"run_id": "run-1", "step": step, "indices": list(range(step, step + prompts)),
            "rewards": rewards.astype(float).tolist(), "unserved": "accept"}


def setup(client: TestClient, reports: int = 2) -> None:
    assert client.post("/v1/curricula", json=SPEC).status_code == 201
    assert client.post(f"{URL}/runs", json={"run_id": "run-1"}).status_code == 201
    for step in range(reports):
        assert client.post(f"{URL}/reports", json=report(step)).status_code == 200


def observed(client: TestClient, store: SqlStore) -> tuple[Any, ...]:
    """Everything a failed write must leave unchanged: the state, the head and the
    stored events (seq, key and payload bytes)."""
    events = [(e.seq, e.idempotency_key, e.payload) for e in store.events("math")]
    return (client.get(f"{URL}/state").json(), client.get(URL).json()["seq"],
            store.head("math").head_seq, events)


def assert_unavailable(response: Any, words: str) -> None:
    """503 UNAVAILABLE naming the cause; an API error also says when to retry."""
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "UNAVAILABLE"
    assert words in error["message"]
    if response.url.path.startswith("/v1/"):
        assert response.headers["retry-after"] == "1"


def test_disk_full_sqlite(sqlite_url: str) -> None:
    store = open_store(sqlite_url, auto_migrate=True)
    assert isinstance(store, SqlStore)
    app = create_app(Settings(database_url=sqlite_url, snapshot_every=1000), store=store)
    with TestClient(app) as client:
        setup(client)
        before = observed(client, store)
        with store.engine.connect() as conn:
            pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())

        def cap(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

        event.listen(store.engine, "connect", cap)
        store.engine.dispose()  # every connection from now on has the cap
        headers = {"Idempotency-Key": "run-1/2"}
        assert_unavailable(client.post(f"{URL}/reports", json=report(2), headers=headers),
                           "full")
        assert_unavailable(client.get("/readyz"), "full")
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        assert observed(client, store) == before

        event.remove(store.engine, "connect", cap)  # space is freed
        store.engine.dispose()
        retry = client.post(f"{URL}/reports", json=report(2), headers=headers)
        assert retry.json() == {"seq": 3, "replayed": False}
        assert client.get("/readyz").json() == {"status": "ready"}
    store.close()


@pytest.fixture
def pg_schema(pg_url: str) -> str:
    return pg_url.split("search_path%3D", 1)[1]


def test_read_only_postgresql(pg_url: str) -> None:
    with TestClient(create_app(Settings(database_url=pg_url, auto_migrate=True))) as client:
        setup(client)
        before = client.get(f"{URL}/state").json()
    read_only = f"{pg_url}%20-cdefault_transaction_read_only%3Don"
    app = create_app(Settings(database_url=read_only, auto_migrate=False))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200  # reads work: nothing known yet
        assert_unavailable(client.post(f"{URL}/reports", json=report(2)), "read-only")
        assert_unavailable(client.get("/readyz"), "read-only")
        assert client.get(f"{URL}/state").json() == before
        assert client.get(URL).json()["seq"] == 2
    app.state.service.store.close()


@pytest.fixture
def proxied_pg(pg_schema: str) -> Iterator[tuple[Any, str]]:
    with tcp_proxy(PG_PORT) as proxy:
        yield proxy, postgres_url(pg_schema, port=proxy.port)


def test_postgresql_unreachable(proxied_pg: tuple[Any, str], pg_url: str) -> None:
    proxy, url = proxied_pg
    app = create_app(Settings(database_url=url, auto_migrate=True))
    with TestClient(app) as client:
        setup(client)
        before = client.get(f"{URL}/state").json()
        proxy.down()
        headers = {"Idempotency-Key": "run-1/2"}
        assert_unavailable(client.post(f"{URL}/reports", json=report(2), headers=headers),
                           "database unavailable")
        assert_unavailable(client.post(f"{URL}/batches", json={"run_id": "run-1", "step": 5}),
                           "database unavailable")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "UNAVAILABLE"
        # Nothing reached the database: check through a direct connection.
        direct = open_store(pg_url)
        try:
            assert direct.head("math").head_seq == 2
            assert [e.seq for e in direct.events("math")] == [1, 2]
        finally:
            direct.close()

        proxy.up()
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.get(f"{URL}/state").json() == before
        retry = client.post(f"{URL}/reports", json=report(2), headers=headers)
        assert retry.json() == {"seq": 3, "replayed": False}
    app.state.service.store.close()


def test_readyz_turns_green_after_the_hold(sqlite_url: str) -> None:
    """A replica taken out of rotation for a storage failure gets no writes to prove
    itself with, so the memory of the failure expires (`storage_failure_hold_s`)."""
    store = open_store(sqlite_url, auto_migrate=True)
    assert isinstance(store, SqlStore)
    app = create_app(Settings(database_url=sqlite_url, storage_failure_hold_s=0.2),
                     store=store)
    clock = [0.0]
    app.state.storage_health.clock = lambda: clock[0]
    with TestClient(app) as client:
        setup(client, reports=0)

        def full(dbapi_connection: Any, _record: Any) -> None:
            pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

        event.listen(store.engine, "connect", full)
        store.engine.dispose()
        assert client.post(f"{URL}/reports", json=report(0)).status_code == 503
        assert client.get("/readyz").status_code == 503
        clock[0] = 0.19
        assert json.loads(client.get("/readyz").text)["error"]["details"]["failed_s_ago"] == 0.19
        clock[0] = 0.2
        assert client.get("/readyz").status_code == 200
    store.close()
