"""Which 503s keep readiness red: only a write the database itself refused, told by its
error code (`StorageRefused`), never by words in a message that may quote a user's
names or a host's."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from paceline_server.api.health import StorageHealth
from paceline_server.domain.errors import StorageRefused, Unavailable
from paceline_server.store.connection import translate_errors


def database_error(*statements: str, url: str = "sqlite://") -> sa_exc.SQLAlchemyError:
    """The SQLAlchemy error that the last of `statements` raises on a real database."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    except sa_exc.SQLAlchemyError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("the statements succeeded")


def test_a_full_sqlite_database_is_a_refused_write() -> None:
    error = translate_errors(database_error(
        "PRAGMA max_page_count = 2", "CREATE TABLE t (x BLOB)",
        "INSERT INTO t VALUES (randomblob(100000))"))
    assert isinstance(error, StorageRefused)
    assert error.code == "UNAVAILABLE"  # the same code and status as any 503


def test_errors_whose_messages_only_sound_like_a_refusal_stay_unavailable() -> None:
    """Words once decided it: these messages hold "disk" and "full" without a refusal."""
    error = translate_errors(database_error("SELECT disk_full()"))  # no such function
    assert isinstance(error, Unavailable) and "disk_full" in error.message
    assert not isinstance(error, StorageRefused)
    unknown_host = translate_errors(database_error(
        "SELECT 1", url="postgresql+psycopg://postgres@fullstack-disk.invalid:5432/test"))
    assert isinstance(unknown_host, Unavailable) and "fullstack-disk" in unknown_host.message
    assert not isinstance(unknown_host, StorageRefused)


@pytest.mark.parametrize("message", [
    "curriculum 'fullset' was recreated meanwhile; retry",  # a user's name in a race
    "database unavailable: could not connect to server at disk-01: connection refused",
    "timed out after 5 s waiting for the write lock",
])
def test_other_503s_leave_readiness_green(message: str) -> None:
    health = StorageHealth(hold_s=60.0)
    health.failed(Unavailable(message))
    assert health.failure() is None


def test_a_refused_write_turns_readiness_red_until_a_write_succeeds() -> None:
    now = [0.0]
    health = StorageHealth(hold_s=60.0, clock=lambda: now[0])
    health.failed(StorageRefused("database unavailable: database or disk is full"))
    now[0] = 1.5
    failure = health.failure()
    assert failure is not None and "disk is full" in failure.message
    health.succeeded()
    assert health.failure() is None
