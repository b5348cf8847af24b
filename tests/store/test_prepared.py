"""`Prepared` statements (the report hot path on the driver), on SQLite and PostgreSQL:
they store and return exactly what SQLAlchemy's own execution does, and driver errors
come out as SQLAlchemy's exceptions, which the store translates as before."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import LargeBinary, bindparam, insert, literal, select
from sqlalchemy import exc as sa_exc

from paceline_server.domain.errors import Unavailable
from paceline_server.store import tables as t
from paceline_server.store.connection import begin_write, translated_errors
from paceline_server.store.prepared import Prepared
from paceline_server.store.sql import SqlStore

SPEC = {"name": "c", "layout": {"distributions": [{"name": "d0", "size": 10}]},
        "objectives": ["acc"], "seed": 3}
WHEN = datetime(2025, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)

_EVENT = (t.events.c.seq, t.events.c.run_id, t.events.c.payload, t.events.c.created_at)


def _event_values(cid: int) -> dict[str, object]:
    return {"curriculum_id": cid, "seq": 1, "kind": "report", "run_id": "r", "step": 0,
            "idempotency_key": "k", "payload": b"\x00\xffpayload", "created_at": WHEN,
            "progress": None}


def test_round_trip_matches_sqlalchemy(store: SqlStore) -> None:
    store.create_curriculum("c", SPEC)
    dialect = store.engine.dialect
    with store.engine.begin() as conn:
        cid = conn.execute(select(t.curricula.c.id)).scalar_one()
        Prepared(insert(t.events), dialect).execute(conn, _event_values(cid))
    query = select(*_EVENT).where(t.events.c.curriculum_id == bindparam("cid"))
    with store.engine.connect() as conn:
        ours = Prepared(query, dialect).one_or_none(conn, {"cid": cid})
        theirs = tuple(conn.execute(query, {"cid": cid}).one())
        missing = Prepared(query, dialect).one_or_none(conn, {"cid": cid + 1})
    # The datetime went in and came back through the column type: UTC-aware, exact.
    assert ours is not None and ours[3] == WHEN and ours[3].tzinfo is not None
    assert ours[:2] == theirs[:2] and bytes(ours[2]) == bytes(theirs[2]) == b"\x00\xffpayload"
    assert ours[3] == theirs[3]
    assert missing is None


def test_the_statements_own_values_are_bound(store: SqlStore) -> None:
    """A literal and a LIMIT are bind parameters the caller does not pass: their values
    come from the statement (the duplicate checks' union reads an empty payload and the
    first row so)."""
    store.create_curriculum("c", SPEC)
    dialect = store.engine.dialect
    with store.engine.begin() as conn:
        cid = conn.execute(select(t.curricula.c.id)).scalar_one()
        Prepared(insert(t.events), dialect).execute(conn, _event_values(cid))
        Prepared(insert(t.events), dialect).execute(conn, {**_event_values(cid), "seq": 2,
                                                           "idempotency_key": "k2"})
    query = select(t.events.c.seq, literal(b"\x01", LargeBinary), literal(7)).where(
        t.events.c.curriculum_id == bindparam("cid")).order_by(t.events.c.seq.desc()).limit(1)
    with store.engine.connect() as conn:
        found = Prepared(query, dialect).one_or_none(conn, {"cid": cid})
    assert found is not None and (found[0], bytes(found[1]), found[2]) == (2, b"\x01", 7)


def test_driver_errors_are_sqlalchemy_errors(store: SqlStore) -> None:
    store.create_curriculum("c", SPEC)
    statement = Prepared(insert(t.events), store.engine.dialect)
    with store.engine.begin() as conn:
        cid = conn.execute(select(t.curricula.c.id)).scalar_one()
        statement.execute(conn, _event_values(cid))
    with pytest.raises(sa_exc.IntegrityError) as caught, store.engine.begin() as conn:
        statement.execute(conn, _event_values(cid))  # the same (curriculum, seq) again
    assert "INSERT INTO events" in str(caught.value)
    assert caught.value.orig is not None


def test_a_lock_timeout_is_translated(store: SqlStore) -> None:
    """What `translated_errors` makes of a driver error raised through `Prepared`."""
    if store.dialect != "sqlite":
        pytest.skip("a held SQLite write lock is the portable way to time a statement out")
    store.create_curriculum("c", SPEC)
    impatient = SqlStore(store.url.render_as_string(hide_password=False), lock_timeout=0.05)
    try:
        with store.engine.connect() as holder:
            begin_write(holder)
            # The holder's BEGIN IMMEDIATE takes the database's write lock.
            with holder.begin(), pytest.raises(Unavailable), translated_errors(), \
                    impatient.engine.begin() as conn:
                Prepared(t.curricula.update().values(head_seq=5),
                         impatient.engine.dialect).execute(conn, {"head_seq": 5})
    finally:
        impatient.close()
