"""Two replicas (two `PacelineService`s on one PostgreSQL schema and one Redis prefix)
while Redis stalls, dies, comes back or loses its keys: Redis is only a speed-up, so a
request is never held longer than the documented timeout and every answer is the
database's."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest
import redis
from replica_support import NAME, RedisServer, redis_prefix, wait_for
from replica_support import report_body as body
from replica_support import service_pair as replicas

from paceline_server.app.service import NextBatch
from support import REDIS_URL, FreezingProxy, free_port


def test_a_stalled_redis_adds_at_most_its_timeout_to_a_report() -> None:
    """PACELINE_REDIS_TIMEOUT_S is documented as the most Redis can add to a request.
    Redis that accepts but never answers cost twice that: the client retried every
    timed-out call once (a retry meant for a pooled connection broken by a restart)."""
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = FreezingProxy(port)
    timeout = 1.0
    try:
        with redis_prefix() as prefix, replicas(
                f"redis://127.0.0.1:{proxy.port}/0", prefix,
                redis_timeout_s=timeout) as (a, b):
            a.report(NAME, body(a, 0), "k0")
            report = body(b, 1)
            b.engine(NAME)
            proxy.frozen.set()  # every connection, open or new, goes silent
            started = time.monotonic()
            ack = b.report(NAME, report, "k1", NextBatch(step=2))
            elapsed = time.monotonic() - started
            assert (ack.seq, ack.replayed) == (2, False)
            assert elapsed < 1.5 * timeout, f"a report took {elapsed:.2f} s"
            assert not b.coordinator.stats().redis_up
    finally:
        proxy.close()


def test_a_malformed_head_message_does_not_end_the_listener() -> None:
    """A message on the heads channel with a non-numeric seq escaped the listener's
    parsing and ended its thread: the replica never folded another replica's head."""
    with redis_prefix() as prefix, replicas(REDIS_URL, prefix) as (a, b):
        b.next_batch(NAME, "r", 0)  # b caches the engine at seq 0
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for bad in ('{"n":"shared","c":1,"s":"x"}', '{"n":"shared","c":1,"s":null}',
                        '{"n":"shared","c":1,"s":Infinity}', '[1]', 'not json'):
                client.publish(f"{prefix}heads", bad)
        finally:
            client.close()
        time.sleep(0.3)
        a.report(NAME, body(a, 0), "k0")
        cached = b.engines.peek(NAME)
        assert cached is not None
        wait_for(lambda: cached.seq == 1, 5, "b's listener stopped folding heads")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_dying_coming_back_and_losing_its_keys(tmp_path: Path) -> None:
    """Reports acknowledged while Redis is down are applied once, batches served after
    it comes back reflect every committed report, retries after it lost its keys are
    answered from the log, and both replicas take leases again."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        with redis_prefix(server.url) as prefix, replicas(
                server.url, prefix, redis_timeout_s=0.2) as (a, b):
            for service in (a, b):  # fail over fast, come back fast
                service.coordinator.retry_after_s = 0.3  # type: ignore[attr-defined]
            first = a.report(NAME, body(a, 0), "k0")
            b.next_batch(NAME, "r", 1)  # b caches the engine
            server.kill()
            during = b.report(NAME, body(b, 1), "k1")
            again = a.report(NAME, body(b, 1), "k1")  # a retry while Redis is down
            assert again == dataclasses.replace(during, replayed=True)
            server.start()  # empty: a restart that lost every key
            for service in (a, b):
                wait_for(lambda s=service: s.coordinator.stats().redis_up, 10,
                         "a replica stayed degraded")
            # The retries are answered once, from the log (Redis forgot the acks).
            assert a.report(NAME, body(a, 0), "k0") == dataclasses.replace(
                first, replayed=True)
            assert b.report(NAME, body(b, 1), "k1") == dataclasses.replace(
                during, replayed=True)
            after = a.report(NAME, body(a, 2), "k2", NextBatch(step=3))
            assert after.seq == 3 and after.batch is not None
            # b never heard of seq 2 on Redis, nor of seq 3 perhaps yet; a batch it
            # computes now reflects every committed report.
            assert b.next_batch(NAME, "r", 3).clock == after.batch.clock == 3
            assert b.next_batch(NAME, "r", 4).clock == 3
            assert b.engine(NAME).engine.to_bytes() == a.engine(NAME).engine.to_bytes()
            events = list(a.store.events(NAME))
            assert [e.seq for e in events] == [1, 2, 3]
            assert a.coordinator.stats().leases.get("acquired", 0) >= 1
    finally:
        server.kill()
