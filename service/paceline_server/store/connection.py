"""Connections to the database: URL handling, engine creation, SQLite pragmas and hooks,
and the mapping of database errors to domain errors.

Shared by the store (`store/sql.py`) and the migrations (`store/migrate.py`), so both
open the database the same way: SQLite in WAL mode with its busy timeout, foreign keys
and our own BEGIN (pysqlite's implicit transactions off; see `store/sql.py`), PostgreSQL
through psycopg 3 with a lock timeout and an optional schema as the search_path.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from paceline_server.domain.errors import (
    PacelineError,
    SchemaOutdated,
    StorageRefused,
    Unavailable,
)

_log = logging.getLogger(__name__)

#: Connection execution option read by the SQLite `begin` hook: "DEFERRED" | "IMMEDIATE".
_SQLITE_BEGIN = "paceline_sqlite_begin"
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SQLITE_SYNC = {"OFF", "NORMAL", "FULL", "EXTRA"}


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; plain `postgresql://` (and `postgres://`) mean psycopg 3, the
    only PostgreSQL driver Paceline depends on."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}: use "
                         "sqlite:///path/to/file.db or postgresql+psycopg://...")
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in database \
                or parsed.query.get("mode") == "memory":
            raise ValueError("in-memory SQLite is not supported (every pooled connection "
                             "would see its own empty database): use a file, e.g. "
                             "sqlite:///./paceline.db")
    return parsed


def create_sql_engine(url: str | URL, *, schema: str | None = None, pool_size: int = 5,
                      max_overflow: int = 10, pool_timeout: float = 30.0,
                      lock_timeout: float = 30.0, connect_timeout: float = 10.0,
                      sqlite_synchronous: str = "FULL", echo: bool = False) -> Engine:
    """An engine configured the way the store (and the migrations) rely on.

    SQLite: WAL, `busy_timeout = lock_timeout`, foreign keys on, pysqlite's implicit
    transactions off and BEGIN issued by SQLAlchemy's `begin` event (IMMEDIATE when the
    connection carries the `paceline_sqlite_begin="IMMEDIATE"` execution option).

    PostgreSQL: psycopg 3, `lock_timeout` on every session (a writer that cannot get the
    curriculum lock fails with Unavailable instead of hanging forever), pre-ping so a
    restarted server costs no failed request, and `schema` as the search_path (the schema
    must exist; Alembic's version table lives there too).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if schema is not None:
            raise ValueError("the schema option applies to PostgreSQL only")
        sync = sqlite_synchronous.upper()
        if sync not in _SQLITE_SYNC:
            raise ValueError(f"sqlite_synchronous must be one of {sorted(_SQLITE_SYNC)}")
        engine = create_engine(
            parsed, echo=echo, pool_size=pool_size, max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            connect_args={"timeout": lock_timeout, "check_same_thread": False})
        _install_sqlite_hooks(engine, busy_timeout_ms=int(lock_timeout * 1000),
                              synchronous=sync)
        return engine

    options = [f"-c lock_timeout={int(lock_timeout * 1000)}"]
    if schema is not None:
        if not _SCHEMA_RE.match(schema):
            raise ValueError(f"schema must be a lower-case SQL identifier, got {schema!r}")
        options.append(f"-c search_path={schema}")
    existing = parsed.query.get("options")
    if existing:
        # URL options come first; ours are appended (a later -c wins, so an explicit
        # schema option overrides a search_path in the URL).
        given = existing if isinstance(existing, str) else " ".join(existing)
        options.insert(0, given)
    parsed = parsed.update_query_dict({"options": " ".join(options)})
    connect = {"connect_timeout": max(1, int(connect_timeout)), **DEAD_PEER}
    for key in parsed.query:  # what the URL says wins
        connect.pop(key, None)
    return create_engine(
        parsed, echo=echo, pool_size=pool_size, max_overflow=max_overflow,
        pool_timeout=pool_timeout, pool_pre_ping=True, connect_args=connect)


#: libpq options that bound how long a connection whose peer went silent (a partition, a
#: failover to another host behind the same address) can hold a request: TCP
#: keepalives probe an idle connection after 10 s (3 probes 3 s apart), and data the
#: server does not acknowledge within 20 s fails the connection. Without them a
#: request that had written to such a connection waited for the kernel's retransmission
#: limit (about 15 minutes) holding its curriculum's lock, with /readyz green.
DEAD_PEER = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3,
             "keepalives_count": 3, "tcp_user_timeout": 20_000}


def _ensure_wal(cursor: Any, timeout: float) -> None:
    """Put the database file in WAL mode (persistent: a no-op once any connection did).

    WAL lets readers run alongside the single writer. Switching *into* WAL needs an
    exclusive lock and SQLite answers "database is locked" at once instead of calling the
    busy handler, which several processes opening a fresh file together do hit; so the
    switch is retried here until `timeout`.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            mode = str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode != "wal":
                # Not a lock: this file system (or file) cannot do WAL. Still correct,
                # only readers and the writer now take turns.
                _log.warning("SQLite stays in journal mode %r (WAL unavailable)", mode)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError("database is locked (could not switch to WAL)")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _install_sqlite_hooks(engine: Engine, *, busy_timeout_ms: int, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Autocommit at the driver level: no implicit BEGIN; we issue it ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            _ensure_wal(cursor, busy_timeout_ms / 1000)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):
            raise ValueError(f"bad {_SQLITE_BEGIN} option {mode!r}")
        # On the driver: BEGIN is on every transaction's path, and SQLAlchemy's execute
        # machinery costs several times what SQLite takes to run it. A driver error
        # is raised wrapped, as `exec_driver_sql` would, so the store translates it.
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        statement = f"BEGIN {mode}"
        try:
            dbapi.execute(statement)
        except sqlite3.Error as exc:
            raise sa_exc.DBAPIError.instance(statement, (), exc, sqlite3.Error,
                                             dialect=connection.dialect) from exc


def begin_write(connection: Connection) -> None:
    """Make the next transaction on `connection` a write transaction (`BEGIN IMMEDIATE` on
    SQLite; no effect on PostgreSQL, which locks rows instead)."""
    connection.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})


#: The database's own codes for a write it refused while reads still work: SQLite's
#: primary result codes FULL, READONLY and IOERR; PostgreSQL's SQLSTATEs disk_full
#: (also "could not extend file", quotas), io_error and read_only_sql_transaction (a
#: standby after a failover). `StorageRefused`, which readiness remembers.
SQLITE_REFUSALS = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY,
                             sqlite3.SQLITE_IOERR})
POSTGRES_REFUSALS = frozenset({"53100", "58030", "25006"})


def translate_errors(exc: sa_exc.SQLAlchemyError) -> PacelineError | None:
    """The domain error for a database error, or None when it is a bug to surface as is.

    Connection failures, timeouts and lock timeouts become `Unavailable` (retryable); a
    missing table becomes `SchemaOutdated` (someone dropped it, or the schema was never
    created and the check at open was skipped).
    """
    text = str(getattr(exc, "orig", None) or exc)
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if "no such table" in text or sqlstate == "42P01":
        return SchemaOutdated(
            f"the database has no Paceline schema ({text.splitlines()[0]}); "
            "run `paceline-server migrate`")
    if sqlstate == "25006":  # read_only_sql_transaction: a standby after a failover
        return StorageRefused(f"database is read-only: {text.strip().splitlines()[0]}",
                              {"reason": "ReadOnlySqlTransaction"})
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError,
                        sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            reason = "connection lost"
        else:
            reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        kind = StorageRefused if _refused_write(exc) else Unavailable
        return kind(f"database unavailable: {reason}",
                    {"reason": type(getattr(exc, "orig", exc)).__name__})
    return None


def _refused_write(exc: sa_exc.SQLAlchemyError) -> bool:
    """Whether the database itself refused the write (by its error code: a message may
    name a host or a file, and a lost connection is no refusal)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return False
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in SQLITE_REFUSALS
    return getattr(orig, "sqlstate", None) in POSTGRES_REFUSALS


@contextmanager
def translated_errors() -> Iterator[None]:
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        mapped = translate_errors(exc)
        if mapped is None:
            raise
        raise mapped from exc
