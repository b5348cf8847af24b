"""The Redis coordinator against a real Redis server (no mocks): fair exclusive write
leases with compare-and-delete release and renewal, head notifications, the idempotency
cache, and the fallback to the database alone when Redis is unreachable or dies."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from replica_support import RedisServer, redis_prefix, wait_for

from api_support import make_client
from paceline_server.adapters.redis_coordination import (
    RedisCoordinator,
    coordinator_from_settings,
)
from paceline_server.app.coordination import LocalCoordinator
from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import REDIS_URL, FreezingProxy, free_port

Factory = Callable[..., RedisCoordinator]


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_prefix() as value:
        yield value


@pytest.fixture
def make(prefix: str) -> Iterator[Factory]:
    """Coordinators sharing one prefix (one per simulated replica), closed afterwards."""
    made: list[RedisCoordinator] = []

    def factory(url: str = REDIS_URL, on_head: Callable[[str, int, int], int] | None = None,
                **options: float) -> RedisCoordinator:
        coordinator = RedisCoordinator(url, prefix=prefix, **options)  # type: ignore[arg-type]
        coordinator.start(on_head or (lambda name, stamp, seq: 0))
        made.append(coordinator)
        return coordinator

    yield factory
    for coordinator in made:
        coordinator.close()


def hold(coordinator: RedisCoordinator, log: list[str], tag: str, seconds: float,
         entered: threading.Event | None = None) -> threading.Thread:
    def body() -> None:
        with coordinator.exclusive("cur"):
            log.append(f"{tag}+")
            if entered is not None:
                entered.set()
            time.sleep(seconds)
            log.append(f"{tag}-")

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def test_settings_choose_the_coordinator() -> None:
    assert isinstance(coordinator_from_settings(Settings()), LocalCoordinator)
    chosen = coordinator_from_settings(Settings(redis_url=REDIS_URL, redis_lease_ttl_s=0))
    try:
        assert isinstance(chosen, RedisCoordinator) and chosen.lease_ttl_ms == 0
    finally:
        chosen.close()


def test_the_app_is_handed_the_redis_adapter_at_start_up(prefix: str, tmp_path: Path) -> None:
    """The use cases only know the Coordinator protocol: the REST app's start-up picks
    the Redis adapter from the settings and hands it to the service."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with make_client(url, redis_url=REDIS_URL, redis_prefix=prefix) as client:
        coordinator = client.app.state.service.coordinator  # type: ignore[attr-defined]
        assert isinstance(coordinator, RedisCoordinator)
        assert coordinator.prefix == prefix


def test_a_service_handed_no_coordinator_uses_the_database_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = open_store(url, auto_migrate=True)
    with caplog.at_level(logging.WARNING, logger="paceline_server.app.service"):
        service = PacelineService(store, Settings(database_url=url, redis_url=REDIS_URL))
    try:
        assert isinstance(service.coordinator, LocalCoordinator)
        assert "no coordinator was handed to this service" in caplog.text
    finally:
        service.close()
        store.close()


def test_lease_is_exclusive_and_first_come_first_served(make: Factory) -> None:
    a, b, c = make(), make(), make()
    log: list[str] = []
    entered = threading.Event()
    first = hold(a, log, "A", 0.3, entered)
    assert entered.wait(5)
    second = hold(b, log, "B", 0.05)
    time.sleep(0.1)  # B is queued before C
    third = hold(c, log, "C", 0.05)
    time.sleep(0.1)
    # A comes back while B and C wait: it queues behind them instead of winning again.
    first.join()
    again = hold(a, log, "A2", 0.0)
    for thread in (second, third, again):
        thread.join(10)
    assert log == ["A+", "A-", "B+", "B-", "C+", "C-", "A2+", "A2-"]
    assert a.stats().leases == {"acquired": 2}


def test_dead_holder_lease_expires_and_is_never_released_by_others(
        make: Factory, prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    lock = f"{prefix}lease:{{cur}}"
    # A replica that died holding the lease (no renewal): it lapses after its TTL.
    client.set(lock, "dead-replica", px=400)
    a = make(lease_ttl_s=0.4)
    started = time.monotonic()
    with a.exclusive("cur"):
        waited = time.monotonic() - started
        token = client.get(lock)
        assert token not in (None, b"dead-replica")
        # Our lease lapses too (say a long pause) and another replica takes it over:
        client.set(lock, "next-holder", px=5000)
    assert 0.2 < waited < 1.4
    # Compare-and-delete: our release left the other holder's lease alone.
    assert client.get(lock) == b"next-holder"
    assert a.stats().leases_lost == 1
    client.close()


def test_renewal_keeps_a_long_commit_exclusive(make: Factory) -> None:
    a, b = make(lease_ttl_s=0.3), make(lease_ttl_s=0.3)
    log: list[str] = []
    entered = threading.Event()
    first = hold(a, log, "A", 1.0, entered)  # three TTLs
    assert entered.wait(5)
    second = hold(b, log, "B", 0.0)
    first.join()
    second.join(5)
    assert log == ["A+", "A-", "B+", "B-"]
    assert a.stats().leases_lost == 0


def test_heads_and_acks_reach_other_replicas(make: Factory) -> None:
    heads: list[tuple[str, int, int]] = []
    writer = make()
    reader = make(on_head=lambda name, stamp, seq: heads.append((name, stamp, seq)) or 1)
    time.sleep(0.2)  # the reader's listener is subscribed
    with writer.exclusive("cur") as notice:
        notice.record(1234, 9, [("k", 9, b"\x01" * 32)])
    wait_for(lambda: bool(heads), 5, "head not delivered")
    assert heads == [("cur", 1234, 9)]
    wait_for(lambda: reader.stats().catch_ups == 1, 5, "catch-up not counted")
    assert reader.cached_ack("cur", 1234, "k") == (9, b"\x01" * 32)
    assert reader.cached_ack("cur", 1235, "k") is None  # a recreated curriculum
    assert reader.cached_ack("cur", 1234, "other") is None
    assert reader.stats().idempotency_hits == 1


def test_ack_cache_entries_expire(make: Factory, prefix: str) -> None:
    writer = make(ack_ttl_s=60)
    with writer.exclusive("cur") as notice:
        notice.record(1, 3, [("k", 3, b"\x02" * 32)])
    client = redis.Redis.from_url(REDIS_URL)
    assert 0 < client.ttl(f"{prefix}ack:{{cur}}:1:k") <= 60
    client.close()


def test_unreachable_redis_falls_back_at_once(make: Factory,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "paceline_server.app.coordination")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    down = make(closed, retry_after_s=30.0)
    started = time.monotonic()
    assert down.cached_ack("cur", 1, "k") is None
    for _ in range(3):
        with down.exclusive("cur") as notice:  # no lease: the row lock alone
            notice.record(1, 2, [("k", 2, b"\x03" * 32)])
    assert time.monotonic() - started < 1.0
    stats = down.stats()
    assert not stats.redis_up
    assert stats.leases == {"unavailable": 3}
    assert sum(stats.fallbacks.values()) >= 7
    assert sum(n for (_, reason), n in stats.fallbacks.items() if reason == "error") >= 1
    warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per request


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_dying_and_coming_back(make: Factory, tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    heads: list[int] = []
    try:
        writer = make(server.url, retry_after_s=0.3)
        reader = make(server.url, retry_after_s=0.3,
                      on_head=lambda name, stamp, seq: heads.append(seq) or 1)
        time.sleep(0.2)
        with writer.exclusive("cur") as notice:
            notice.record(1, 1, [])
        wait_for(lambda: heads == [1], 5, "head not delivered")
        server.kill()
        with writer.exclusive("cur") as notice:  # mid-flight loss: no exception
            notice.record(1, 2, [])
        assert writer.cached_ack("cur", 1, "k") is None
        assert writer.stats().leases["unavailable"] >= 1
        server.start()
        # After retry_after_s both come back: the listener subscribes again and the
        # writer takes leases and announces heads again.
        wait_for(lambda: reader.stats().redis_up, 5, "listener did not resubscribe")
        time.sleep(0.4)
        with writer.exclusive("cur") as notice:
            notice.record(1, 3, [("k", 3, b"\x04" * 32)])
        wait_for(lambda: heads[-1] == 3, 5, "head not delivered after the restart")
        assert writer.stats().leases["acquired"] == 2
        assert writer.cached_ack("cur", 1, "k") == (3, b"\x04" * 32)
    finally:
        server.kill()


def test_a_silent_subscription_is_noticed_and_renewed(make: Factory) -> None:
    """The connection of the heads subscription goes silent (a partition; new
    connections work): the listener heard nothing for good, with Redis reported up and
    nothing logged, so the replica stopped catching up in the background. It now pings
    an idle subscription and subscribes again when the ping is not answered."""
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = FreezingProxy(port)
    try:
        heads: list[int] = []
        writer = make()
        reader = make(url=f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.1,
                      retry_after_s=0.2,
                      on_head=lambda name, stamp, seq: heads.append(seq) or 1)
        assert reader.listen_ping_s == 1.0
        time.sleep(0.3)
        with writer.exclusive("cur") as notice:
            notice.record(1, 1, [])
        wait_for(lambda: heads == [1], 5, "head not delivered")
        proxy.freeze_open()  # the open connections go silent; new ones work
        with writer.exclusive("cur") as notice:
            notice.record(1, 2, [])
        time.sleep(0.5)
        assert heads == [1]  # not heard on the silent connection
        deadline = time.monotonic() + 15
        seq = 2
        while not any(h > 2 for h in heads):  # heard again once it subscribed again
            assert time.monotonic() < deadline, "the listener stayed deaf"
            seq += 1
            with writer.exclusive("cur") as notice:
                notice.record(1, seq, [])
            time.sleep(0.3)
        assert reader.stats().redis_up
    finally:
        proxy.close()
