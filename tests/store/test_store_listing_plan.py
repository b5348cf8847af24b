"""A page of a listing is read off an index, on both backends: no sort of everything listed
per page, and a page deep in the listing starts at its key.

Nothing indexed runs by (curriculum, created_at, run_id), the runs listing's order, so
every page (`limit + 1` rows) sorted every run of the curriculum; and the curricula
listing orders names by code point (COLLATE "C" on PostgreSQL), which the unique index of
the database's own collation cannot serve, so every page sorted all curricula. On
PostgreSQL an index must hold the text column in the collation the listing orders by, or
the sort stays; SQLite's BINARY default already is that order. The plans checked are of
the statement the store really sends (captured as it runs), on tables with statistics
(ANALYZE), as a server has.
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
#: The curricula listing's index: PostgreSQL's (revision 0009) is of name COLLATE "C";
#: SQLite's unique constraint's own index already is in that (BINARY) order.
CURRICULA_INDEX = {"postgresql": "ix_curricula_name_code_point",
                   "sqlite": "sqlite_autoindex_curricula_1"}
CURRICULA = 20_000
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


def read_off(found: Any, backend: str, index: str, what: str) -> None:
    """`found` (a plan) reads a page off `index` from the page's key, without a sort."""
    if backend == "sqlite":
        assert not any("TEMP B-TREE" in step for step in found), (what, found)
        assert any(index in step for step in found), (what, found)
        return
    steps = list(nodes(found))
    assert not any("Sort" in n["Node Type"] for n in steps), (what, found)
    scans = [n for n in steps if "Scan" in n["Node Type"]]
    assert [n.get("Index Name") for n in scans] == [index], (what, found)
    # The scan starts at the page's key: it reads the page (and, for runs, the one row
    # tied with the key's time before it), not every row listed before it.
    read = scans[0]["Actual Rows"] + scans[0].get("Rows Removed by Filter", 0)
    assert read <= PAGE + 3, (what, found)


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
            read_off(found, migrated.backend, INDEX, what)
    finally:
        store.close()


def test_a_page_of_curricula_is_read_off_the_index(migrated: Database) -> None:
    """Names mixing case and punctuation, whose code-point order differs from a
    linguistic collation's: the pages come in code-point order and each reads its rows
    off the index from its key."""
    store = migrated.open()
    try:
        names = sorted(f"{'Aa_-'[i % 4]}{i:05d}" for i in range(CURRICULA))
        with store.engine.begin() as conn:
            conn.execute(insert(t.curricula), [
                {"name": name, "spec": {"name": name}, "created_at": T0} for name in names])
            conn.execute(text("ANALYZE"))
        deep = 15_000
        for what, after, start in (("first", None, 0), ("deep", names[deep], deep + 1)):
            with statements(store) as seen:
                page = [c.name for c in store.list_curricula(PAGE, after=after)]
            assert page == names[start:start + PAGE], what
            statement, parameters = next((s, p) for s, p in reversed(seen)
                                         if "FROM curricula" in s)
            found = plan(store, migrated.backend, statement, parameters)
            read_off(found, migrated.backend, CURRICULA_INDEX[migrated.backend], what)
    finally:
        store.close()
