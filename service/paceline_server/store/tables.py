"""The relational schema of the event store (SQLAlchemy Core metadata).

The migrations in `paceline_server/migrations/versions` create exactly these tables; this
module is what the store queries against and what Alembic autogenerate compares with, so
a change here needs a new migration (`alembic revision --autogenerate`).

Design notes:
- Every child row hangs off `curricula.id` with ON DELETE CASCADE, so deleting a
  curriculum is one statement and never leaves orphans (SQLite needs
  `PRAGMA foreign_keys=ON`, which the store sets on every connection).
- `events` is keyed by (curriculum_id, seq): the primary key *is* the optimistic
  concurrency guard of the log, and (curriculum_id, idempotency_key) is unique so a
  retried report can never be appended twice (NULL keys do not collide).
- JSON documents are stored as TEXT (not a JSON column type) so both backends store the
  same bytes and a dump of one can be loaded into the other.
- Timestamps are timezone-aware UTC in Python on both backends (`UtcDateTime`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

from paceline_server.domain.stored_json import readable_document

#: Constraint names are deterministic so migrations can refer to them on every backend.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: Alembic's revision table. Not the default `alembic_version`, so a database (or schema)
#: shared with another Alembic-managed application cannot confuse the two histories.
VERSION_TABLE = "paceline_alembic_version"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone-aware type and hands back naive values; PostgreSQL returns
    values in the session time zone. Normalising both to UTC-aware makes values
    round-trip exactly, which matters because the app compares `created_at` to tell a
    recreated curriculum of the same name apart.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass a timezone-aware one")
        value = value.astimezone(UTC)
        # SQLite stores the text form without an offset; keep it in UTC, offset-free.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None,
                             dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JsonText(TypeDecorator[Any]):
    """A JSON document stored as TEXT (same representation on every backend).

    Read back through `readable_document`: a document an older version stored with
    what JSON output cannot carry (lone surrogates, NaN, not an object) comes back
    sanitised, never breaking the answer that includes it (`paceline-server repair`)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), allow_nan=False)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else readable_document(value)[0]


def _curriculum_fk() -> ForeignKey:
    return ForeignKey("curricula.id", ondelete="CASCADE")


#: BigInteger ids on PostgreSQL; SQLite needs plain INTEGER for its rowid alias.
_Id = BigInteger().with_variant(Integer(), "sqlite")

curricula = Table(
    "curricula", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False),
    Column("spec", JsonText(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("head_seq", BigInteger(), nullable=False, server_default="0"),
    UniqueConstraint("name"),
)

#: `Index.info` key of the one backend an index is created on (`only_on`).
ONLY_ON = "paceline_only_on"


def only_on(dialect: str, index: Index) -> Index:
    """`index`, created on `dialect` only: by `metadata.create_all` (`ddl_if`) and, through
    `declared_for`, in what Alembic compares the migrations with (it ignores `ddl_if`)."""
    index.info[ONLY_ON] = dialect
    return index.ddl_if(dialect=dialect)


def declared_for(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic's `include_object` for a database of `dialect`: this metadata less the
    indexes declared for another backend only, which its migrations do not create there."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool,
                compare_to: Any) -> bool:
        only = obj.info.get(ONLY_ON) if type_ == "index" and not reflected else None
        return only is None or only == dialect

    return include


# The curricula listing's order (revision 0009), on PostgreSQL: names are listed and
# compared by code point (COLLATE "C", `SqlStore._by_code_point`), which the unique index,
# of the database's collation, cannot serve, so each page sorted every curriculum. On
# SQLite the unique index's BINARY order already is that order; a second index there
# would only cost writes.
only_on("postgresql", Index("ix_curricula_name_code_point", curricula.c.name,
                            postgresql_ops={"name": 'COLLATE "C"'}))

runs = Table(
    "runs", metadata,
    Column("curriculum_id", _Id, _curriculum_fk(), nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("metadata", JsonText(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_heartbeat", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("curriculum_id", "run_id"),
    # The runs listing's order (revision 0008): a page starts at its token's key and
    # reads on in order, not a sort of all the curriculum's runs. PostgreSQL lists run
    # ids by code point (COLLATE "C", `SqlStore._by_code_point`), so the index must be
    # of that collation to serve the ORDER BY (rendered after the column, where an
    # operator class goes; reflection does not report it, test_store_listing_plan does).
    Index("ix_runs_curriculum_id_created_at_run_id", "curriculum_id", "created_at",
          "run_id", postgresql_ops={"run_id": 'COLLATE "C"'}),
)

events = Table(
    "events", metadata,
    Column("curriculum_id", _Id, _curriculum_fk(), nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("step", BigInteger(), nullable=False),
    Column("idempotency_key", String(256), nullable=True),
    Column("payload", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # The history row of the state after this report (revision 0006), written by the
    # same INSERT: a history reads it instead of folding the report again. NULL for
    # events written before it existed, or by a writer that computed none (an import).
    Column("progress", LargeBinary(), nullable=True),
    PrimaryKeyConstraint("curriculum_id", "seq"),
    UniqueConstraint("curriculum_id", "idempotency_key",
                     name="uq_events_curriculum_id_idempotency_key"),
    # A (run, step) is reported once: the writer looks its first report up by it (seq
    # last, so "the first" is read off the index, not found by scanning the log).
    Index("ix_events_curriculum_id_run_id_step", "curriculum_id", "run_id", "step", "seq"),
)

#: What an event deleted by pruning leaves for the duplicate checks (revision 0007): its
#: position, (run, step), key and a SHA-256 digest of its content (`codec.pruned_digest`;
#: of its payload's bytes in rows pruned before content digests). A retry whose answer was lost
#: and a resumed trainer's re-report are still recognised after their event is pruned
#: (the same content answered with the first seq, other content a conflict) at about 100
#: bytes a report instead of its payload.
pruned_events = Table(
    "pruned_events", metadata,
    Column("curriculum_id", _Id, _curriculum_fk(), nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("step", BigInteger(), nullable=False),
    Column("idempotency_key", String(256), nullable=True),
    Column("digest", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("curriculum_id", "seq"),
    UniqueConstraint("curriculum_id", "idempotency_key",
                     name="uq_pruned_events_curriculum_id_idempotency_key"),
    Index("ix_pruned_events_curriculum_id_run_id_step", "curriculum_id", "run_id", "step",
          "seq"),
)

snapshots = Table(
    "snapshots", metadata,
    Column("curriculum_id", _Id, _curriculum_fk(), nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("state", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("curriculum_id", "seq"),
)

batches = Table(
    "batches", metadata,
    Column("curriculum_id", _Id, _curriculum_fk(), nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("step", BigInteger(), nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("payload", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("curriculum_id", "run_id", "step"),
)

#: Refill parts 1, 2, ... of a served step (dynamic sampling); part 0 is `batches`.
batch_parts = Table(
    "batch_parts", metadata,
    Column("curriculum_id", _Id, _curriculum_fk(), nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("step", BigInteger(), nullable=False),
    Column("part", Integer(), nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("payload", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("curriculum_id", "run_id", "step", "part"),
)

#: A snapshot's bytes in bounded parts (revision 0004): the snapshot is its row's `state`
#: followed by these chunks in part order (older rows: all in `state`, no chunks).
snapshot_chunks = Table(
    "snapshot_chunks", metadata,
    Column("curriculum_id", _Id, nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("part", Integer(), nullable=False),
    Column("data", LargeBinary(), nullable=False),
    ForeignKeyConstraint(["curriculum_id", "seq"],
                         ["snapshots.curriculum_id", "snapshots.seq"], ondelete="CASCADE"),
    PrimaryKeyConstraint("curriculum_id", "seq", "part"),
)

#: Per-report history rows in compact chunks (revision 0005): rows first_seq..last_seq of
#: the curriculum's history, bytes opaque to the store (`domain.history.pack_rows`). They
#: outlive pruned events, so a history needs no replay for the range they cover.
history_checkpoints = Table(
    "history_checkpoints", metadata,
    Column("curriculum_id", _Id, _curriculum_fk(), nullable=False),
    Column("last_seq", BigInteger(), nullable=False),
    Column("first_seq", BigInteger(), nullable=False),
    Column("rows", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("curriculum_id", "last_seq"),
)
