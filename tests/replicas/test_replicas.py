"""Several `paceline-server serve` processes on one PostgreSQL (fresh schema per test),
with and without Redis: eight trainers report and ask for batches through all of them,
one replica (or Redis itself) is SIGKILLed mid-load, the trainers fail over with the same
idempotency keys, and the log, every snapshot and every served batch equal a sequential
replay; nothing acknowledged is lost or applied twice."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from replica_support import (
    NAME,
    SPEC,
    Load,
    RedisServer,
    check_log_equals_replay,
    redis_prefix,
    replicas,
    state_of,
    wait_for,
)

from support import REDIS_URL, free_port, fresh_pg_schema

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_schema() as url:
        yield url


def run_load(urls: list[str], kill: object | None = None, after_acks: int = 30,
             steps: int = 12) -> Load:
    """Run the eight trainers; call `kill()` once `after_acks` reports were acked."""
    load = Load(urls, steps=steps)
    threads = load.start()
    if kill is not None:
        wait_for(lambda: load.acked() >= after_acks or load.errors, 60, "load stalled")
        kill()  # type: ignore[operator]
    for thread in threads:
        thread.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a trainer hung"
    assert load.errors == []
    return load


def test_two_replicas_with_redis_one_killed_mid_load(pg_url: str, tmp_path: Path) -> None:
    with redis_prefix() as prefix, replicas(
            pg_url, 2, tmp_path,
            {"PACELINE_REDIS_URL": REDIS_URL, "PACELINE_REDIS_PREFIX": prefix}) as (a, b):
        assert httpx.post(f"{a.url}/v1/curricula", json=SPEC).status_code == 201
        load = run_load([a.url, b.url], kill=a.kill, after_acks=40)
        assert load.retries > 0  # the kill did hit requests in flight or queued
        check_log_equals_replay(pg_url, load)
        # The survivor used Redis: leases, announced heads folded in the background.
        assert b.metric("paceline_redis_up", backend="redis") == 1.0
        assert b.metric("paceline_write_leases_total", outcome="acquired") > 0
        assert b.metric("paceline_background_catch_ups_total") > 0
        # A retry after the fact is answered from the ack cache, without any lock; the
        # same key with other content still gets the log's verdict.
        hits = b.metric("paceline_idempotency_cache_hits_total")
        key = "run-3/5"
        path = f"{b.url}/v1/curricula/{NAME}/reports"
        retry = httpx.post(path, json=load.bodies[key], headers={"Idempotency-Key": key})
        assert retry.json() == {"seq": load.acks[key][0][0], "replayed": True}
        assert b.metric("paceline_idempotency_cache_hits_total") == hits + 1
        other = {**load.bodies[key], "rewards": [[[0.0, 0.0]] * 4] * 12}
        assert httpx.post(path, json=other, headers={"Idempotency-Key": key}
                          ).status_code == 409
        with replicas(pg_url, 1, tmp_path,
                      {"PACELINE_REDIS_URL": REDIS_URL, "PACELINE_REDIS_PREFIX": prefix}
                      ) as (c,):
            # A fresh replica (cold cache) and the survivor serve the same state.
            assert state_of(c.url) == state_of(b.url)
            assert state_of(b.url)["seq"] == 8 * 12


def test_two_replicas_database_only_one_killed_mid_load(pg_url: str, tmp_path: Path) -> None:
    with replicas(pg_url, 2, tmp_path) as (a, b):
        assert httpx.post(f"{b.url}/v1/curricula", json=SPEC).status_code == 201
        load = run_load([a.url, b.url], kill=b.kill, after_acks=40)
        check_log_equals_replay(pg_url, load)
        assert a.metric("paceline_redis_up", backend="database") == 0.0
        assert a.metric("paceline_write_leases_total", outcome="acquired") == 0
        assert state_of(a.url)["seq"] == 8 * 12


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_killed_mid_load_then_back(pg_url: str, tmp_path: Path) -> None:
    """Redis dies under load: no request fails, the replicas carry on with the database
    alone (counted in /metrics), and use Redis again once it is back."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        env = {"PACELINE_REDIS_URL": server.url, "PACELINE_REDIS_PREFIX": "p:"}
        with replicas(pg_url, 2, tmp_path, env) as (a, b):
            assert httpx.post(f"{a.url}/v1/curricula", json=SPEC).status_code == 201
            load = run_load([a.url, b.url], kill=server.kill, after_acks=30)
            assert load.retries == 0  # Redis going away failed no request
            check_log_equals_replay(pg_url, load)
            fallbacks = sum(r.metric("paceline_redis_fallbacks_total", operation=op,
                                     reason=reason)
                            for r in (a, b) for op in ("lease", "announce", "ack_get")
                            for reason in ("error", "down"))
            assert fallbacks > 0
            assert a.metric("paceline_redis_up", backend="redis") == 0.0
            server.start()  # same port, empty: nothing in Redis is needed for correctness
            before = b.metric("paceline_write_leases_total", outcome="acquired")
            more = Load([a.url, b.url], runs=2, steps=3)
            for replica in (a, b):  # the listener subscribes again within retry_after_s
                wait_for(lambda r=replica: r.metric("paceline_redis_up", backend="redis")
                         == 1.0, 10, "a replica did not return to Redis")
            for thread in more.start():
                thread.join(timeout=60)
            assert more.errors == []
            assert b.metric("paceline_write_leases_total", outcome="acquired") > before
    finally:
        server.kill()

