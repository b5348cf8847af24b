"""Crashes under load: the service process is SIGKILLed mid-load and restarted (SQLite and
PostgreSQL), or its PostgreSQL connections are terminated mid-load. The clients (the SDK,
retrying connection errors and 503s with backoff) finish on their own; afterwards every
acknowledged report is in the log exactly once, the log has no gaps and the state equals
a sequential replay."""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from types import ModuleType

import pytest
from reliability_support import Background, check_exactly_once, wait_for_seq
from sqlalchemy import create_engine, text

from support import PG_URL, free_port, service_process

pytestmark = pytest.mark.slow

RUNS, STEPS = 4, 15


def start_load(load: ModuleType, url: str, curriculum: str) -> Background:
    return Background(lambda: load.run_load(url, curriculum, runs=RUNS, steps=STEPS,
                                            duration_s=90))


@pytest.mark.parametrize(("backend", "kills"), [("sqlite", 2), ("postgresql", 1)])
def test_sigkill_under_load_loses_and_duplicates_nothing(
        backend: str, kills: int, sqlite_url: str, request: pytest.FixtureRequest,
        load: ModuleType) -> None:
    database_url = sqlite_url if backend == "sqlite" else request.getfixturevalue("pg_url")
    port = free_port()
    with ExitStack() as processes:
        service = processes.enter_context(service_process(database_url, port))
        background = start_load(load, service.url, "crash")
        for kill in range(kills):
            # Kill while every run has requests in flight, then start a new process on
            # the same port; meanwhile the clients see refused connections and retry.
            wait_for_seq(service.url, "crash", at_least=10 * (kill + 1))
            service.process.kill()
            service.process.wait()
            service = processes.enter_context(service_process(database_url, port))
        result = background.join(timeout=90)
        check_exactly_once(database_url, "crash", result.acks, live_url=service.url)
    assert result.errors == []
    assert len(result.acks) == RUNS * STEPS
    assert result.retries > 0, "the kill did not interrupt the load"


def test_postgresql_connections_terminated_under_load(pg_url: str, load: ModuleType) -> None:
    """We cannot restart the machine's PostgreSQL server (other tests share it), so a
    database restart or failover is simulated for this service only: another connection
    kills all of the service's backends with `pg_terminate_backend` (found by a unique
    `application_name`), in three bursts of ten during the load. In-flight transactions
    fail (503, retried by the clients), idle pooled connections are dead (pre-ping
    replaces them)."""
    name = f"paceline-rel-{uuid.uuid4().hex[:8]}"
    database_url = f"{pg_url}&application_name={name}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    terminated = 0
    try:
        with service_process(database_url) as service:
            background = start_load(load, service.url, "failover")
            for round_ in range(3):
                wait_for_seq(service.url, "failover", at_least=12 * (round_ + 1))
                with admin.connect() as conn:
                    for _ in range(10):
                        terminated += int(conn.execute(text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = :name"), {"name": name}).scalar_one())
                        time.sleep(0.03)
            result = background.join(timeout=90)
            check_exactly_once(database_url, "failover", result.acks, live_url=service.url)
    finally:
        admin.dispose()
    assert terminated >= 3
    assert result.errors == []
    assert len(result.acks) == RUNS * STEPS
    assert result.retries > 0, "no request was in flight when its connection died"
