"""SQLite's writes share one kept connection (one writer at a time): no pool check-out
per transaction, a write that raises replaces it, `close` releases it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from paceline_server.store.sql import SqlStore


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlStore]:
    store = SqlStore(f"sqlite:///{tmp_path / 'p.db'}", auto_migrate=True)
    store.create_curriculum("math", {})
    yield store
    store.close()


def checkouts(store: SqlStore) -> list[Any]:
    seen: list[Any] = []
    event.listen(store.engine, "checkout", lambda dbapi, record, proxy: seen.append(dbapi))
    return seen


def append(store: SqlStore, step: int) -> int:
    with store.writer("math") as handle:
        return handle.append("report", "r", step, f"r/{step}", b"x")


def test_writes_reuse_one_connection(sqlite_store: SqlStore) -> None:
    append(sqlite_store, 0)
    seen = checkouts(sqlite_store)
    for step in range(1, 6):
        append(sqlite_store, step)
    assert seen == []  # five transactions, no pool check-out
    assert sqlite_store.head("math").head_seq == 6
    # Reads still take pooled connections of their own.
    assert [e.step for e in sqlite_store.events("math")] == [0, 1, 2, 3, 4, 5]


def test_a_failed_write_replaces_the_connection_and_leaves_nothing(
        sqlite_store: SqlStore) -> None:
    append(sqlite_store, 0)
    first = sqlite_store._sqlite_writer

    def fail_after_an_append() -> None:
        with sqlite_store.writer("math") as handle:
            handle.append("report", "r", 1, "r/1", b"x")
            raise RuntimeError("the caller's block fails after an append")

    with pytest.raises(RuntimeError):
        fail_after_an_append()
    assert first is not None and first.closed
    assert sqlite_store._sqlite_writer is None
    assert append(sqlite_store, 1) == 2  # rolled back: seq 2 is free again
    assert sqlite_store._sqlite_writer is not None
    assert sqlite_store._sqlite_writer is not first
    assert [e.step for e in sqlite_store.events("math")] == [0, 1]


def test_close_releases_the_kept_connection(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'p.db'}", auto_migrate=True)
    store.create_curriculum("math", {})
    append(store, 0)
    kept = store._sqlite_writer
    assert kept is not None and not kept.closed
    store.close()
    assert kept.closed and store._sqlite_writer is None


def test_dispose_replaces_the_kept_connection(sqlite_store: SqlStore) -> None:
    """`engine.dispose()` means "new connections from now on": the writer's too."""
    append(sqlite_store, 0)
    kept = sqlite_store._sqlite_writer
    seen = checkouts(sqlite_store)
    sqlite_store.engine.dispose()
    append(sqlite_store, 1)
    assert kept is not None and kept.closed
    assert len(seen) == 1 and sqlite_store._sqlite_writer is not kept


def test_close_waits_for_a_running_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = SqlStore(url, auto_migrate=True)
    store.create_curriculum("math", {})
    appended = threading.Event()
    errors: list[BaseException] = []

    def slow_write() -> None:
        try:
            with store.writer("math") as handle:
                handle.append("report", "r", 0, "r/0", b"x")
                appended.set()
                time.sleep(0.3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=slow_write)
    writer.start()
    assert appended.wait(5)
    store.close()  # waits for the write lock: the write commits first
    writer.join(5)
    assert errors == []
    again = SqlStore(url)
    assert [e.step for e in again.events("math")] == [0]
    again.close()
