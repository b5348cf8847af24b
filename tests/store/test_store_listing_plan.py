"""A page of a curriculum's runs is read off an index, on both backends: no sort of all the
curriculum's runs per page, and a page deep in the listing starts at its key.

Nothing indexed runs by (curriculum, created_at, run_id), the listing's order, so every
page (`limit + 1` rows) sorted every run of the curriculum. On PostgreSQL the index must
hold run_id in the collation the listing orders by (COLLATE "C"), or it cannot serve the
ORDER BY and the sort stays. The plans checked are of the statement the store really
sends (captured as it runs), on tables with statistics (ANALYZE), as a server has.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert, select, text
from store_support import Database

from paceline_server.store import tables as t
from paceline_server.store.base import RunKey
from paceline_server.store.sql import SqlStore

INDEX = "ix_runs_curriculum_id_created_at_run_id"
RUNS = 20_000
PAGE = 101  # what a listing of 100 asks the store for
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def fill(store: SqlStore) -> None:
    """RUNS runs in each of two curricula, three to a second (ties broken by id)."""
    for name in ("math", "other"):
        store.create_curriculum(name, {"name": name})
    with store.engine.begin() as conn:
        ids = list(conn.execute(select(t.curricula.c.id)).scalars())
        conn.execute(insert(t.runs), [
            {"curriculum_id": cid, "run_id": f"r{i:05d}", "metadata": {},
             "created_at": T0 + timedelta(seconds=i // 3), "last_heartbeat": T0}
            for cid in ids for i in range(RUNS)])
        conn.execute(text("ANALYZE"))


@contextmanager
def statements(store: SqlStore) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and parameters) the store sends meanwhile."""
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
             executemany: bool) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", grab)


def plan(store: SqlStore, backend: str, statement: str, parameters: Any) -> Any:
    explain = ("EXPLAIN (ANALYZE, FORMAT JSON) " if backend == "postgresql"
               else "EXPLAIN QUERY PLAN ")
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(explain + statement, parameters).all()
    if backend == "postgresql":
        return rows[0][0][0]["Plan"]
    return [row[-1] for row in rows]  # SQLite: one line of text per step


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def listed_page(store: SqlStore, after: RunKey | None) -> tuple[list[str], str, Any]:
    """The run ids of one page and the statement (with parameters) that read them."""
    with statements(store) as seen:
        page = [r.run_id for r in store.list_runs("math", PAGE, after=after)]
    statement, parameters = next((s, p) for s, p in reversed(seen) if "FROM runs" in s)
    return page, statement, parameters


def test_a_page_of_runs_is_read_off_the_index(migrated: Database) -> None:
    store = migrated.open()
    try:
        fill(store)
        deep = 15_000
        pages = {"first": (None, 0),
                 "deep": (RunKey(T0 + timedelta(seconds=deep // 3), f"r{deep:05d}"),
                          deep + 1)}
        for what, (after, start) in pages.items():
            page, statement, parameters = listed_page(store, after)
            assert page == [f"r{i:05d}" for i in range(start, start + PAGE)], what
            found = plan(store, migrated.backend, statement, parameters)
            if migrated.backend == "sqlite":
                assert not any("TEMP B-TREE" in step for step in found), (what, found)
                assert any(INDEX in step for step in found), (what, found)
                continue
            steps = list(nodes(found))
            assert not any("Sort" in n["Node Type"] for n in steps), (what, found)
            scans = [n for n in steps if "Scan" in n["Node Type"]]
            assert [n.get("Index Name") for n in scans] == [INDEX], (what, found)
            # The scan starts at the page's key: it reads the page (and the one row
            # tied with the key's time before it), not every run listed before it.
            read = scans[0]["Actual Rows"] + scans[0].get("Rows Removed by Filter", 0)
            assert read <= PAGE + 3, (what, found)
    finally:
        store.close()
