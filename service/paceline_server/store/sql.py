"""The SQL store: SQLite (embedded default) and PostgreSQL through SQLAlchemy Core.

How the guarantees of `store.base` are met:

- **Serialised writers.** `writer(name)` runs in one transaction that first takes the
  write lock: `BEGIN IMMEDIATE` on SQLite (the database-wide write lock, taken up front so
  two writers can never both hold a read snapshot and then deadlock on the upgrade), and
  `SELECT ... FOR NO KEY UPDATE` of the curriculum row on PostgreSQL (one writer per
  curriculum; NO KEY so inserts into child tables, whose foreign-key checks take KEY SHARE
  on that row, are not held up by a long report). Within one process, writer threads
  first queue on a process-local lock, so they wait there rather than polling in
  SQLite's sleeping busy handler or (PostgreSQL) each holding a pooled connection.
- **Atomic, durable appends.** Events are inserted on the writer's connection and
  `curricula.head_seq` is updated just before the commit, so readers see the new events
  and the new head together or not at all. SQLite runs in WAL mode with
  `synchronous=FULL` (configurable) so a committed append survives power loss.
- **Race-safe first-writer-wins batches.** `INSERT ... ON CONFLICT DO NOTHING` followed
  by a read of the stored row, on both backends.
- **Readers** use short transactions (WAL readers never block the writer on SQLite; MVCC
  on PostgreSQL) and read the event log in pages, so iterating a long log holds no
  snapshot open between pages.

pysqlite's own transaction handling is switched off (it does not BEGIN before SELECT or
DDL, which breaks isolation and transactional migrations): the store issues `BEGIN` /
`BEGIN IMMEDIATE` itself from SQLAlchemy's `begin` event, as SQLAlchemy's SQLite
documentation recommends for Python < 3.12. Engines, pragmas, URLs and the mapping of
database errors live in `store/connection.py` (shared with the migrations).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    LargeBinary,
    Select,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from paceline_server.domain.errors import (
    Conflict,
    CurriculumExists,
    CurriculumNotFound,
    IdempotencyConflict,
    InvalidRequest,
    RunNotFound,
    Unavailable,
)
from paceline_server.domain.validation import check_document
from paceline_server.store import history_rows, snapshot_rows
from paceline_server.store import tables as t
from paceline_server.store.base import (
    BatchRecord,
    CurriculumHead,
    CurriculumImporter,
    CurriculumRecord,
    CurriculumWriter,
    EventProgress,
    EventRecord,
    HistoryCheckpoint,
    RunKey,
    RunRecord,
    RunSummary,
    SnapshotRecord,
    SnapshotStream,
    Store,
    payload_digest,
)
from paceline_server.store.connection import (
    begin_write,
    create_sql_engine,
    normalize_url,
    translated_errors,
)
from paceline_server.store.migrate import check_schema, upgrade
from paceline_server.store.prepared import Prepared

_log = logging.getLogger(__name__)

#: A result row. (Row's type parameters differ between SQLAlchemy 2.0 and 2.1; the
#: columns are read by name, so nothing is gained by spelling them out.)
_Row = Any
#: Events fetched per read transaction when iterating the log.
EVENT_PAGE_SIZE = 128

# The statements of the report/batch hot path, built once with bound parameters: building
# an expression per call (and deriving its cache key) cost more than running it.
_c, _b, _e = t.curricula, t.batches, t.events
_HEAD = select(_c.c.created_at, _c.c.head_seq).where(_c.c.name == bindparam("name"))
_CURRICULUM_ROW = select(_c.c.id, _c.c.head_seq, _c.c.created_at).where(
    _c.c.name == bindparam("name"))
# FOR NO KEY UPDATE on PostgreSQL (ignored by SQLite, which is already locked).
_CURRICULUM_ROW_LOCKED = _CURRICULUM_ROW.with_for_update(key_share=True)
_LOOKUP_BATCH = select(_c.c.created_at, _c.c.head_seq, _b.c.seq, _b.c.payload).select_from(
    _c.outerjoin(_b, (_b.c.curriculum_id == _c.c.id) & (_b.c.run_id == bindparam("run_id"))
                 & (_b.c.step == bindparam("step")))).where(_c.c.name == bindparam("name"))
_SELECT_BATCH = select(_b.c.seq, _b.c.payload).where(
    _b.c.curriculum_id == bindparam("cid"), _b.c.run_id == bindparam("run_id"),
    _b.c.step == bindparam("step"))
_EVENT_COLUMNS = (_e.c.seq, _e.c.kind, _e.c.run_id, _e.c.step, _e.c.idempotency_key,
                  _e.c.payload, _e.c.created_at)
_p = t.pruned_events


def _found(events: Sequence[Any], pruned: Sequence[Any]) -> Select[Any]:
    """The duplicate checks' read: the first match in the log or in what pruning left
    of it (payload empty, digest set), in one statement."""
    live = select(*_EVENT_COLUMNS, cast(null(), LargeBinary).label("digest")).where(*events)
    gone = select(_p.c.seq, _p.c.kind, _p.c.run_id, _p.c.step, _p.c.idempotency_key,
                  literal(b"", LargeBinary).label("payload"), _p.c.created_at,
                  _p.c.digest).where(*pruned)
    both = union_all(live, gone).subquery()
    return select(*both.c).order_by(both.c.seq).limit(1)


_FIND_BY_KEY = _found(
    (_e.c.curriculum_id == bindparam("cid"), _e.c.idempotency_key == bindparam("key")),
    (_p.c.curriculum_id == bindparam("cid"), _p.c.idempotency_key == bindparam("key")))
_FIND_REPORT = _found(
    (_e.c.curriculum_id == bindparam("cid"), _e.c.run_id == bindparam("run_id"),
     _e.c.step == bindparam("step"), _e.c.kind == bindparam("kind")),
    (_p.c.curriculum_id == bindparam("cid"), _p.c.run_id == bindparam("run_id"),
     _p.c.step == bindparam("step"), _p.c.kind == bindparam("kind")))
#: Pruning moves this many events at a time (their payloads are read to digest them).
_PRUNE_CHUNK = 500
_INSERT_EVENT = insert(_e)
_SET_HEAD = update(_c).where(_c.c.id == bindparam("cid")).values(
    head_seq=bindparam("new_head"))


def _now() -> datetime:
    return datetime.now(UTC)


def _same_creation(name: str, current: datetime, expected: datetime | None) -> None:
    """Unavailable (retry) when `name` is no longer the curriculum created at `expected`
    (deleted and created again meanwhile): a write meant for that one stores nothing."""
    if expected is not None and current != expected:
        raise Unavailable(f"curriculum {name!r} was recreated meanwhile; retry",
                          {"curriculum": name})


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value


class _KeyedLocks:
    """Process-local reentrant locks by key, dropped when nobody holds or waits on them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.RLock, list[int]]] = {}

    @contextmanager
    def hold(self, key: str | None, timeout: float) -> Iterator[None]:
        """Hold the lock of `key` (no lock at all for None); Unavailable after `timeout`."""
        if key is None:
            yield
            return
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.RLock(), [0]))
            users[0] += 1
        try:
            if not lock.acquire(timeout=timeout):
                raise Unavailable(f"timed out after {timeout:g} s waiting for the write lock",
                                  {"reason": "LockTimeout"})
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[key]


class SqlStore(Store):
    """`Store` on SQLite or PostgreSQL.

    Options: `snapshot_keep` (snapshots kept per curriculum, newest by seq);
    `snapshot_chunk_bytes` (largest chunk a snapshot given as pieces is stored in: the
    memory a snapshot write needs beyond the state);
    `auto_migrate` (bring the schema to head on open — the embedded SQLite default;
    otherwise the schema is checked and `SchemaOutdated` raised when it is behind);
    `schema` (PostgreSQL search_path, e.g. to isolate tests); `pool_size`,
    `max_overflow`, `pool_timeout`; `lock_timeout` (seconds a writer waits for the lock
    before `Unavailable`); `sqlite_synchronous` ("FULL" = durable against power loss).
    """

    def __init__(self, url: str, *, snapshot_keep: int = 2,
                 snapshot_chunk_bytes: int = 4 << 20, auto_migrate: bool = False,
                 schema: str | None = None, pool_size: int = 5, max_overflow: int = 10,
                 pool_timeout: float = 30.0, lock_timeout: float = 30.0,
                 connect_timeout: float = 10.0, sqlite_synchronous: str = "FULL",
                 echo: bool = False) -> None:
        if snapshot_keep < 1:
            raise ValueError("snapshot_keep must be at least 1")
        self.url = normalize_url(url)
        self.snapshot_keep = snapshot_keep
        if snapshot_chunk_bytes < 1:
            raise ValueError("snapshot_chunk_bytes must be at least 1")
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self.lock_timeout = lock_timeout
        self._sqlite_synchronous = sqlite_synchronous.upper()
        self.engine = create_sql_engine(
            self.url, schema=schema, pool_size=pool_size, max_overflow=max_overflow,
            pool_timeout=pool_timeout, lock_timeout=lock_timeout,
            connect_timeout=connect_timeout, sqlite_synchronous=sqlite_synchronous, echo=echo)
        self.dialect = self.engine.dialect.name
        self._local_locks = _KeyedLocks()
        # RETURNING tells a stored row from a conflict (rowcount cannot: psycopg gives -1).
        insert_batch = self._insert(t.batches).on_conflict_do_nothing(
            index_elements=["curriculum_id", "run_id", "step"]).returning(t.batches.c.step)
        # The report/batch hot path runs on the driver (see store.prepared); echo=True
        # logs only the statements that go through SQLAlchemy.
        dialect = self.engine.dialect
        self._sql_curriculum = Prepared(_CURRICULUM_ROW, dialect)
        self._sql_lock_curriculum = Prepared(_CURRICULUM_ROW_LOCKED, dialect)
        self._sql_lookup_batch = Prepared(_LOOKUP_BATCH, dialect)
        self._sql_select_batch = Prepared(_SELECT_BATCH, dialect)
        self._sql_insert_batch = Prepared(insert_batch, dialect)
        self._sql_find_by_key = Prepared(_FIND_BY_KEY, dialect)
        self._sql_find_report = Prepared(_FIND_REPORT, dialect)
        self._sql_insert_event = Prepared(_INSERT_EVENT, dialect)
        self._sql_set_head = Prepared(_SET_HEAD, dialect)
        self._sqlite_writer: Connection | None = None
        self._sqlite_writer_pool: object = None  # the pool it came from (see dispose)
        try:
            if auto_migrate:
                upgrade(self.engine)
            else:
                check_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"SqlStore({self.url.render_as_string(hide_password=True)!r})"

    # ---------------------------------------------------------------- plumbing
    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A short read transaction (deferred BEGIN on SQLite: a WAL read snapshot)."""
        with translated_errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, curriculum: str | None = None, *,
               durable: bool = True) -> Iterator[Connection]:
        """A write transaction.

        SQLite: the database write lock up front, after queueing on one process-local
        lock so in-process threads wait on a condition rather than in SQLite's sleeping
        busy handler. PostgreSQL: rows are locked by the statements; a `curriculum`
        writer (log appends, pruning) first queues on a process-local lock per curriculum
        so waiting threads do not each hold a pooled connection.
        """
        if self.dialect == "sqlite":
            key: str | None = ""
        else:
            key = None if curriculum is None else f"curriculum:{curriculum}"
        with translated_errors(), self._local_locks.hold(key, self.lock_timeout), \
                self._writer_connection() as conn:
            begin_write(conn)
            if durable or self.dialect != "sqlite" or self._sqlite_synchronous != "FULL":
                with conn.begin():
                    if not durable and self.dialect == "postgresql":
                        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    yield conn
                return
            # WAL + NORMAL: the commit reaches the WAL file but is not fsynced; the next
            # FULL commit on the database fsyncs the WAL, this frame included.
            # On the driver connection: SQLAlchemy would open a transaction, inside which
            # SQLite refuses to change the setting.
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA synchronous = NORMAL")
            try:
                with conn.begin():
                    yield conn
            finally:
                raw.execute(f"PRAGMA synchronous = {self._sqlite_synchronous}")

    @contextmanager
    def _writer_connection(self) -> Iterator[Connection]:
        """The connection a write transaction runs on. SQLite has one writer at a time
        (every write holds the process-local lock first), so it keeps one connection
        for all of them instead of taking one from the pool and handing it back per
        transaction (the check-in resets and queues it: ~17 us in a hot loop, several
        times that between a trainer's steps). A write that raises closes it; the next
        one opens a fresh one, and so does the first after `engine.dispose()` (which
        replaces the pool). PostgreSQL writers run in parallel on pooled connections.
        (Block-interleaved embedded loop, 128 x 8 x 2 reports: 1.47-1.52 -> 1.41 ms p50.)"""
        if self.dialect != "sqlite":
            with self.engine.connect() as pooled:
                yield pooled
            return
        kept = self._sqlite_writer
        if kept is not None and self._sqlite_writer_pool is not self.engine.pool:
            kept.close()  # the engine was disposed: its connections are to be replaced
            kept = None
        if kept is None or kept.closed or kept.invalidated:
            kept = self._sqlite_writer = self.engine.connect()
            self._sqlite_writer_pool = self.engine.pool
        try:
            yield kept
        except BaseException:
            self._sqlite_writer = None
            kept.close()
            raise

    def _insert(self, table: Any) -> Any:
        """The dialect's INSERT, which has `on_conflict_do_nothing/update`."""
        return pg_insert(table) if self.dialect == "postgresql" else sqlite_insert(table)

    def _curriculum_row(self, conn: Connection, name: str, *,
                        lock: bool = False) -> tuple[int, int, datetime]:
        """(id, head_seq, created_at) of the curriculum, its row locked if `lock`."""
        query = self._sql_lock_curriculum if lock else self._sql_curriculum
        row = query.one_or_none(conn, {"name": name})
        if row is None:
            raise CurriculumNotFound(f"curriculum {name!r} not found", {"curriculum": name})
        cid, head_seq, created_at = row
        return int(cid), int(head_seq), created_at

    def _curriculum_id(self, conn: Connection, name: str) -> int:
        return self._curriculum_row(conn, name)[0]

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release the connections. SQLite's kept writer connection is closed under the
        write lock, so a write still running commits (or fails) first."""
        if self._sqlite_writer is not None:
            try:
                with self._local_locks.hold("", self.lock_timeout):
                    writer, self._sqlite_writer = self._sqlite_writer, None
                    if writer is not None:
                        writer.close()
            except Unavailable:
                _log.warning("a write held the lock past %g s at close; its connection "
                             "is left to it", self.lock_timeout)
        self.engine.dispose()

    def ping(self) -> None:
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1")

    # ---------------------------------------------------------------- curricula
    @staticmethod
    def _curriculum_record(row: _Row) -> CurriculumRecord:
        return CurriculumRecord(name=row.name, spec=row.spec, created_at=row.created_at,
                                head_seq=int(row.head_seq))

    _CURRICULUM_COLUMNS = (t.curricula.c.name, t.curricula.c.spec, t.curricula.c.created_at,
                           t.curricula.c.head_seq)

    def create_curriculum(self, name: str, spec: Mapping[str, Any]) -> CurriculumRecord:
        record = CurriculumRecord(name=name, spec=dict(spec), created_at=_now(), head_seq=0)
        try:
            with self._write() as conn:
                conn.execute(insert(t.curricula).values(
                    name=name, spec=record.spec, created_at=record.created_at, head_seq=0))
        except sa_exc.IntegrityError as exc:
            raise CurriculumExists(f"curriculum {name!r} already exists",
                                   {"curriculum": name}) from exc
        return record

    def get_curriculum(self, name: str) -> CurriculumRecord:
        with self._read() as conn:
            row = conn.execute(select(*self._CURRICULUM_COLUMNS).where(
                t.curricula.c.name == name)).one_or_none()
        if row is None:
            raise CurriculumNotFound(f"curriculum {name!r} not found", {"curriculum": name})
        return self._curriculum_record(row)

    def head(self, name: str) -> CurriculumHead:
        with self._read() as conn:
            row = conn.execute(_HEAD, {"name": name}).one_or_none()
        if row is None:
            raise CurriculumNotFound(f"curriculum {name!r} not found", {"curriculum": name})
        return CurriculumHead(name=name, created_at=row.created_at,
                              head_seq=int(row.head_seq))

    #: Names per statement: SQLite's default limit of bound parameters is far above.
    HEADS_PER_QUERY = 500

    def heads(self, names: Iterable[str]) -> dict[str, CurriculumHead]:
        wanted = sorted(set(names))
        found: dict[str, CurriculumHead] = {}
        with self._read() as conn:
            for start in range(0, len(wanted), self.HEADS_PER_QUERY):
                chunk = wanted[start:start + self.HEADS_PER_QUERY]
                for row in conn.execute(select(_c.c.name, _c.c.created_at, _c.c.head_seq)
                                        .where(_c.c.name.in_(chunk))):
                    found[row.name] = CurriculumHead(name=row.name, created_at=row.created_at,
                                                     head_seq=int(row.head_seq))
        return found

    def _by_code_point(self, column: Any) -> Any:
        """`column` to order by code point, as SQLite's BINARY does: PostgreSQL orders
        text by the database's collation, which for one created with a linguistic
        locale (en_US.UTF-8) puts "a" before "B" and skips punctuation, so a listing's
        order, and which items each page of it holds, depended on the backend."""
        return column.collate("C") if self.dialect == "postgresql" else column

    def list_curricula(self, limit: int = 100, offset: int = 0,
                       after: str | None = None) -> list[CurriculumRecord]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be non-negative")
        name = self._by_code_point(t.curricula.c.name)
        query = select(*self._CURRICULUM_COLUMNS).order_by(name)
        if after is not None:  # compared in the order listed: by code point
            query = query.where(name > after)
        with self._read() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [self._curriculum_record(row) for row in rows]

    def delete_curriculum(self, name: str) -> None:
        """One DELETE; the foreign keys cascade to runs, events, snapshots and batches. On
        PostgreSQL it waits for a writer of the curriculum to finish (row lock)."""
        with self._write() as conn:
            result = conn.execute(delete(t.curricula).where(t.curricula.c.name == name))
            if result.rowcount == 0:
                raise CurriculumNotFound(f"curriculum {name!r} not found",
                                         {"curriculum": name})

    # ---------------------------------------------------------------- runs
    _RUN_COLUMNS = (t.runs.c.run_id, t.runs.c.metadata, t.runs.c.created_at,
                    t.runs.c.last_heartbeat)

    @staticmethod
    def _run_record(curriculum: str, row: _Row) -> RunRecord:
        return RunRecord(curriculum=curriculum, run_id=row.run_id, created_at=row.created_at,
                         last_heartbeat=row.last_heartbeat, metadata=dict(row.metadata))

    def _select_run(self, conn: Connection, cid: int, curriculum: str,
                    run_id: str, *, lock: bool = False) -> RunRecord:
        """The run's row; with `lock`, locked until the transaction ends (FOR UPDATE on
        PostgreSQL; SQLite's write transaction holds the whole database already)."""
        query = select(*self._RUN_COLUMNS).where(
            t.runs.c.curriculum_id == cid, t.runs.c.run_id == run_id)
        row = conn.execute(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise RunNotFound(f"run {run_id!r} not found in curriculum {curriculum!r}",
                              {"curriculum": curriculum, "run_id": run_id})
        return self._run_record(curriculum, row)

    def add_run(self, curriculum: str, run_id: str, metadata: Mapping[str, Any],
                now: datetime) -> RunRecord:
        """Attach a run. Attaching an existing run id is a re-attach (a retried request or
        a trainer resuming): the stored run is kept, its heartbeat set to `now` and the
        given metadata merged over the stored one. The merged document is held to the
        limits of a new one (`check_document`: InvalidRequest, nothing changed), or each
        re-attach could add another 64 KiB to the run.

        The merge reads the stored run locked (FOR UPDATE on PostgreSQL, where
        re-attaches otherwise run in parallel): concurrent re-attaches merge one after
        the other, each over the other's keys, and the limit is judged on what is
        really stored. Without the lock the later write dropped the earlier one's keys."""
        _aware(now, "now")
        try:
            with self._write() as conn:
                cid = self._curriculum_id(conn, curriculum)
                inserted = conn.execute(
                    self._insert(t.runs).values(
                        curriculum_id=cid, run_id=run_id, metadata=dict(metadata),
                        created_at=now, last_heartbeat=now)
                    .on_conflict_do_nothing(index_elements=["curriculum_id", "run_id"])
                    # RETURNING, not rowcount: psycopg reports -1 for a skipped insert.
                    .returning(t.runs.c.run_id)).first()
                if inserted is None:
                    stored = self._select_run(conn, cid, curriculum, run_id, lock=True)
                    merged = {**stored.metadata, **metadata}
                    check_document(merged, "metadata", InvalidRequest)
                    conn.execute(update(t.runs).where(
                        t.runs.c.curriculum_id == cid, t.runs.c.run_id == run_id).values(
                        last_heartbeat=now, metadata=merged))
                return self._select_run(conn, cid, curriculum, run_id)
        except sa_exc.IntegrityError as exc:  # the curriculum was deleted meanwhile
            raise CurriculumNotFound(f"curriculum {curriculum!r} not found",
                                     {"curriculum": curriculum}) from exc

    def get_run(self, curriculum: str, run_id: str) -> RunRecord:
        with self._read() as conn:
            cid = self._curriculum_id(conn, curriculum)
            return self._select_run(conn, cid, curriculum, run_id)

    def list_runs(self, curriculum: str, limit: int | None = None, offset: int = 0,
                  after: RunKey | None = None, *,
                  created_at: datetime | None = None) -> list[RunRecord]:
        if (limit is not None and limit < 0) or offset < 0:
            raise ValueError("limit and offset must be non-negative")
        created, run_id = t.runs.c.created_at, self._by_code_point(t.runs.c.run_id)
        query = select(*self._RUN_COLUMNS).order_by(created, run_id)
        if after is not None:
            # (created_at, run_id) > after, spelled out rather than as a row value (plain
            # SQL on any SQLite), run_id compared by code point as it is ordered. The
            # redundant created_at >= bound is what an index range can start at: the OR
            # alone is a filter, and a deep page read every run before it off the index.
            _aware(after.created_at, "after.created_at")
            query = query.where(created >= after.created_at,
                                or_(created > after.created_at,
                                    and_(created == after.created_at, run_id > after.run_id)))
        with self._read() as conn:
            # Checked on the row whose id the runs are read by: SQLite reads one
            # snapshot, and PostgreSQL's next statement, if it sees a later one, finds
            # no runs under an id a recreation never takes again (a new sequence value).
            cid, _, current = self._curriculum_row(conn, curriculum)
            if created_at is not None and current != created_at:
                raise Conflict(f"curriculum {curriculum!r} was deleted and created again "
                               "since this listing of its runs began; list them again "
                               "from the first page", {"curriculum": curriculum})
            rows = conn.execute(query.where(t.runs.c.curriculum_id == cid)
                                .limit(limit).offset(offset)).all()
        return [self._run_record(curriculum, row) for row in rows]

    def run_summary(self, curriculum: str, stale_at: datetime) -> RunSummary:
        _aware(stale_at, "stale_at")
        runs = t.runs
        with self._read() as conn:
            cid = self._curriculum_id(conn, curriculum)
            count, stale, newest = conn.execute(
                select(func.count(), func.count().filter(runs.c.last_heartbeat <= stale_at),
                       func.max(runs.c.last_heartbeat))
                .where(runs.c.curriculum_id == cid)).one()
        return RunSummary(int(count), int(stale), newest)

    def heartbeat(self, curriculum: str, run_id: str, now: datetime) -> RunRecord:
        _aware(now, "now")
        with self._write() as conn:
            cid = self._curriculum_id(conn, curriculum)
            conn.execute(update(t.runs).where(t.runs.c.curriculum_id == cid,
                                              t.runs.c.run_id == run_id)
                         .values(last_heartbeat=now))
            return self._select_run(conn, cid, curriculum, run_id)

    # ---------------------------------------------------------------- events
    @contextmanager
    def writer(self, name: str) -> Iterator[CurriculumWriter]:
        """Lock the curriculum, yield a writer on this transaction, commit on clean exit
        (with the new head_seq), roll back if the block raises."""
        with self._write(name) as conn:
            handle = _SqlWriter(self, conn, *self._curriculum_row(conn, name, lock=True))
            try:
                yield handle
                handle._finish()
            finally:
                handle._active = False

    @contextmanager
    def importer(self, name: str, spec: Mapping[str, Any] | None = None,
                 ) -> Iterator[CurriculumImporter]:
        """`writer` on a transaction that may also create the curriculum (with `spec`)
        and attach runs: the caller's whole import commits at the end or not at all."""
        with self._write(name) as conn:
            if spec is not None:
                created = conn.execute(
                    self._insert(t.curricula).values(
                        name=name, spec=dict(spec), created_at=_now(), head_seq=0)
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(t.curricula.c.id)).first()
                if created is None:
                    raise CurriculumExists(f"curriculum {name!r} already exists",
                                           {"curriculum": name})
            handle = _SqlImporter(self, conn, *self._curriculum_row(conn, name, lock=True))
            try:
                yield handle
                handle._finish()
            finally:
                handle._active = False

    @staticmethod
    def _event_record(row: _Row) -> EventRecord:
        """From a row (or tuple) of `_EVENT_COLUMNS`."""
        seq, kind, run_id, step, key, payload, created_at = row
        return EventRecord(seq=int(seq), kind=kind, run_id=run_id, step=int(step),
                           idempotency_key=key, payload=bytes(payload), created_at=created_at)

    def events(self, name: str, after_seq: int = 0,
               limit: int | None = None) -> Iterator[EventRecord]:
        """Committed events with seq > after_seq, in order.

        The curriculum is looked up now (CurriculumNotFound is raised by this call, not by
        the first `next()`); the events are then read lazily in pages of
        `EVENT_PAGE_SIZE`, one short transaction each, so a long log is never held in
        memory or under one open snapshot. Appends commit whole and in order, so every
        page continues a prefix of the log.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative")
        with self._read() as conn:
            cid = self._curriculum_id(conn, name)
        return self._iter_events(cid, after_seq, limit)

    def _iter_events(self, cid: int, after_seq: int,
                     limit: int | None) -> Iterator[EventRecord]:
        remaining = limit
        while remaining is None or remaining > 0:
            page = EVENT_PAGE_SIZE if remaining is None else min(EVENT_PAGE_SIZE, remaining)
            with self._read() as conn:
                rows = conn.execute(
                    select(*_EVENT_COLUMNS)
                    .where(t.events.c.curriculum_id == cid, t.events.c.seq > after_seq)
                    .order_by(t.events.c.seq).limit(page)).all()
            for row in rows:
                yield self._event_record(row)
            if len(rows) < page:
                return
            after_seq = int(rows[-1].seq)
            if remaining is not None:
                remaining -= len(rows)

    def latest_snapshot(self, name: str, at_most: int | None = None) -> SnapshotRecord | None:
        with self._read() as conn:
            cid = self._curriculum_id(conn, name)
            found = snapshot_rows.newest(conn, cid, at_most)
            if found is None:
                return None
            seq, head, created_at = found
            state = b"".join(snapshot_rows.chunks(conn, cid, seq, head))
        return SnapshotRecord(seq=seq, state=state, created_at=created_at)

    @contextmanager
    def snapshot_stream(self, name: str,
                        at_most: int | None = None) -> Iterator[SnapshotStream | None]:
        with self._read() as conn:
            cid = self._curriculum_id(conn, name)
            found = snapshot_rows.newest(conn, cid, at_most)
            if found is None:
                yield None
                return
            seq, head, created_at = found
            yield SnapshotStream(seq, created_at, snapshot_rows.chunks(conn, cid, seq, head))

    def prune_events(self, name: str, up_to_seq: int,
                     digest: Callable[[bytes], bytes] = payload_digest) -> int:
        """Delete events with seq <= up_to_seq that the newest snapshot covers.

        Events after the newest snapshot are never deleted (they are the only record of
        that state): with the newest snapshot at S, events up to min(up_to_seq, S) go,
        and with no snapshot nothing does. Serialised with writers (same lock).
        """
        with self._write(name) as conn:
            cid = self._curriculum_row(conn, name, lock=True)[0]
            newest = conn.execute(select(func.max(t.snapshots.c.seq)).where(
                t.snapshots.c.curriculum_id == cid)).scalar_one_or_none()
            if newest is None:
                return 0
            bound = min(int(up_to_seq), int(newest))
            return self._move_pruned(conn, cid, bound, digest)

    def _move_pruned(self, conn: Connection, cid: int, bound: int,
                     digest: Callable[[bytes], bytes]) -> int:
        """Delete events with seq <= bound, leaving in `pruned_events` what the duplicate
        checks need of each (a chunk at a time: payloads are read to digest them)."""
        e = t.events
        moved = 0
        while True:
            rows = conn.execute(
                select(e.c.seq, e.c.kind, e.c.run_id, e.c.step, e.c.idempotency_key,
                       e.c.payload, e.c.created_at)
                .where(e.c.curriculum_id == cid, e.c.seq <= bound)
                .order_by(e.c.seq).limit(_PRUNE_CHUNK)).all()
            if not rows:
                return moved
            conn.execute(insert(_p), [
                {"curriculum_id": cid, "seq": seq, "kind": kind, "run_id": run_id,
                 "step": step, "idempotency_key": key, "digest": digest(payload),
                 "created_at": created_at}
                for seq, kind, run_id, step, key, payload, created_at in rows])
            conn.execute(delete(e).where(e.c.curriculum_id == cid,
                                         e.c.seq <= int(rows[-1][0])))
            moved += len(rows)

    # ---------------------------------------------------------------- batches
    def get_batch(self, name: str, run_id: str, step: int) -> BatchRecord | None:
        with self._read() as conn:
            cid = self._curriculum_id(conn, name)
            return self._select_batch(conn, cid, run_id, step)

    def lookup_batch(self, name: str, run_id: str,
                     step: int) -> tuple[CurriculumHead, BatchRecord | None]:
        """One statement: the curriculum row left-joined with the batch of (run, step)."""
        with self._read() as conn:
            row = self._sql_lookup_batch.one_or_none(
                conn, {"name": name, "run_id": run_id, "step": step})
        if row is None:
            raise CurriculumNotFound(f"curriculum {name!r} not found", {"curriculum": name})
        created_at, head_seq, seq, payload = row
        head = CurriculumHead(name=name, created_at=created_at, head_seq=int(head_seq))
        if payload is None:
            return head, None
        return head, BatchRecord(run_id=run_id, step=step, seq=int(seq), payload=bytes(payload))

    def _select_batch(self, conn: Connection, cid: int, run_id: str,
                      step: int) -> BatchRecord | None:
        row = self._sql_select_batch.one_or_none(
            conn, {"cid": cid, "run_id": run_id, "step": step})
        if row is None:
            return None
        seq, payload = row
        return BatchRecord(run_id=run_id, step=step, seq=int(seq), payload=bytes(payload))

    def put_batch(self, name: str, record: BatchRecord, *, durable: bool = True,
                  created_at: datetime | None = None) -> BatchRecord:
        """INSERT ... ON CONFLICT DO NOTHING, then read back what is stored: the caller gets
        the first writer's batch whether it won or lost the race. (On PostgreSQL a
        conflicting in-flight insert makes ours wait for its commit; the read is a new
        statement snapshot under READ COMMITTED, so it sees the winner.)"""
        try:
            with self._write(durable=durable) as conn:
                cid, _, current = self._curriculum_row(conn, name)
                _same_creation(name, current, created_at)
                return self._store_batch(conn, cid, record)
        except sa_exc.IntegrityError as exc:  # the curriculum was deleted meanwhile
            raise CurriculumNotFound(f"curriculum {name!r} not found",
                                     {"curriculum": name}) from exc

    def _store_batch(self, conn: Connection, cid: int, record: BatchRecord) -> BatchRecord:
        inserted = self._sql_insert_batch.one_or_none(conn, {
            "curriculum_id": cid, "run_id": record.run_id, "step": record.step,
            "seq": record.seq, "payload": record.payload, "created_at": _now()})
        if inserted is not None:  # ours: no need to read it back
            return record
        stored = self._select_batch(conn, cid, record.run_id, record.step)
        if stored is None:  # pragma: no cover - impossible after the insert
            raise RuntimeError("batch vanished right after it was stored")
        return stored

    # ---------------------------------------------------------------- history
    def put_history(self, name: str, first_seq: int, last_seq: int, rows: bytes, *,
                    created_at: datetime | None = None) -> None:
        with self._write(name) as conn:
            cid, head_seq, current = self._curriculum_row(conn, name, lock=True)
            _same_creation(name, current, created_at)
            history_rows.check_range(first_seq, last_seq, head_seq)
            history_rows.put_checkpoint(conn, self._insert, cid, first_seq, last_seq, rows)

    def history_checkpoints(self, name: str, after_seq: int = 0,
                            max_bytes: int | None = None) -> list[HistoryCheckpoint]:
        with self._read() as conn:
            return history_rows.checkpoints(conn, self._curriculum_id(conn, name), after_seq,
                                            max_bytes)

    def event_progress(self, name: str, after_seq: int,
                       limit: int | None = None) -> list[EventProgress]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative")
        with self._read() as conn:
            return history_rows.event_progress(conn, self._curriculum_id(conn, name),
                                               after_seq, limit)


def _found_record(row: tuple[Any, ...]) -> EventRecord:
    """From a row of `_found`: an event, or what pruning left of one."""
    *event, digest = row
    record = SqlStore._event_record(tuple(event))
    return record if digest is None else dataclasses.replace(record, digest=bytes(digest))


class _SqlWriter(CurriculumWriter):
    """The handle yielded by `SqlStore.writer`: every call runs on the locked transaction."""

    def __init__(self, store: SqlStore, conn: Connection, curriculum_id: int,
                 head_seq: int, created_at: datetime) -> None:
        self._store = store
        self._conn = conn
        self._cid = curriculum_id
        self._created_at = created_at
        self._start_seq = head_seq
        self._head = head_seq
        self._active = True

    def _check(self) -> None:
        if not self._active:
            raise RuntimeError("the curriculum writer is used outside its `with` block")

    @property
    def head_seq(self) -> int:
        return self._head

    @property
    def created_at(self) -> datetime:
        return self._created_at

    def find_by_key(self, idempotency_key: str) -> EventRecord | None:
        self._check()
        with translated_errors():
            row = self._store._sql_find_by_key.one_or_none(
                self._conn, {"cid": self._cid, "key": idempotency_key})
        return None if row is None else _found_record(row)

    def find_report(self, run_id: str, step: int) -> EventRecord | None:
        self._check()
        with translated_errors():
            row = self._store._sql_find_report.one_or_none(
                self._conn, {"cid": self._cid, "run_id": run_id, "step": step,
                             "kind": "report"})
        return None if row is None else _found_record(row)

    def append(self, kind: str, run_id: str, step: int, idempotency_key: str | None,
               payload: bytes, *, checked: bool = False, progress: bytes | None = None,
               created_at: datetime | None = None) -> int:
        """Insert at head_seq + 1, its history row (`progress`) in the same INSERT. A key
        already in the log raises IdempotencyConflict (checked first, so the transaction
        stays usable on PostgreSQL)."""
        self._check()
        if idempotency_key is not None and not checked:
            previous = self.find_by_key(idempotency_key)
            if previous is not None:
                raise IdempotencyConflict(
                    "idempotency key already used in this curriculum",
                    {"idempotency_key": idempotency_key, "seq": previous.seq})
        seq = self._head + 1
        with translated_errors():
            self._store._sql_insert_event.execute(self._conn, {
                "curriculum_id": self._cid, "seq": seq, "kind": kind, "run_id": run_id,
                "step": step, "idempotency_key": idempotency_key, "payload": bytes(payload),
                "created_at": _now() if created_at is None else created_at,
                "progress": None if progress is None else bytes(progress)})
        self._head = seq
        return seq

    def put_snapshot(self, seq: int, state: bytes | Iterable[bytes | memoryview]) -> None:
        """Upsert the snapshot at `seq` (0 < seq <= head_seq), then drop all but the newest
        `snapshot_keep` of this curriculum (see `store.snapshot_rows`)."""
        self._check()
        if not 0 < seq <= self._head:
            raise ValueError(f"snapshot seq {seq} outside 1..head_seq ({self._head})")
        with translated_errors():
            snapshot_rows.put(self._conn, self._store._insert, self._cid, seq, state,
                              chunk_bytes=self._store.snapshot_chunk_bytes,
                              keep=self._store.snapshot_keep)

    def get_batch(self, run_id: str, step: int) -> BatchRecord | None:
        self._check()
        with translated_errors():
            return self._store._select_batch(self._conn, self._cid, run_id, step)

    def put_batch(self, record: BatchRecord) -> BatchRecord:
        self._check()
        with translated_errors():
            return self._store._store_batch(self._conn, self._cid, record)

    def get_parts(self, run_id: str, step: int) -> list[BatchRecord]:
        self._check()
        parts = t.batch_parts
        with translated_errors():
            rows = self._conn.execute(
                select(parts.c.part, parts.c.seq, parts.c.payload)
                .where(parts.c.curriculum_id == self._cid, parts.c.run_id == run_id,
                       parts.c.step == step).order_by(parts.c.part)).all()
        return [BatchRecord(run_id=run_id, step=step, seq=int(seq), payload=bytes(payload),
                            part=int(part)) for part, seq, payload in rows]

    def put_part(self, record: BatchRecord) -> BatchRecord:
        self._check()
        if record.part < 1:
            raise ValueError("refill parts are numbered from 1 (part 0 is put_batch)")
        parts = t.batch_parts
        with translated_errors():
            inserted = self._conn.execute(
                self._store._insert(parts).values(
                    curriculum_id=self._cid, run_id=record.run_id, step=record.step,
                    part=record.part, seq=record.seq, payload=bytes(record.payload),
                    created_at=_now())
                .on_conflict_do_nothing(
                    index_elements=["curriculum_id", "run_id", "step", "part"])
                .returning(parts.c.part)).first()
        if inserted is not None:
            return record
        stored = [p for p in self.get_parts(record.run_id, record.step)
                  if p.part == record.part]
        return stored[0]

    def put_history(self, first_seq: int, last_seq: int, rows: bytes) -> None:
        self._check()
        history_rows.check_range(first_seq, last_seq, self._head)
        with translated_errors():
            history_rows.put_checkpoint(self._conn, self._store._insert, self._cid,
                                        first_seq, last_seq, rows)

    def last_history_seq(self, before: int) -> int:
        self._check()
        with translated_errors():
            return history_rows.last_before(self._conn, self._cid, before)

    def event_times(self, first_seq: int, last_seq: int) -> list[tuple[int, datetime]]:
        self._check()
        with translated_errors():
            return history_rows.event_times(self._conn, self._cid, first_seq, last_seq)

    def _finish(self) -> None:
        """Publish the new head with the events (same transaction, just before commit)."""
        if self._head != self._start_seq:
            with translated_errors():
                self._store._sql_set_head.execute(
                    self._conn, {"cid": self._cid, "new_head": self._head})


class _SqlImporter(_SqlWriter, CurriculumImporter):
    """The handle yielded by `SqlStore.importer`: a writer that also attaches runs."""

    def add_run(self, run_id: str, metadata: Mapping[str, Any], created_at: datetime,
                last_heartbeat: datetime) -> bool:
        self._check()
        _aware(created_at, "created_at")
        _aware(last_heartbeat, "last_heartbeat")
        with translated_errors():
            inserted = self._conn.execute(
                self._store._insert(t.runs).values(
                    curriculum_id=self._cid, run_id=run_id, metadata=dict(metadata),
                    created_at=created_at, last_heartbeat=last_heartbeat)
                .on_conflict_do_nothing(index_elements=["curriculum_id", "run_id"])
                .returning(t.runs.c.run_id)).first()
        return inserted is not None
