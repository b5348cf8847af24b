"""The Redis adapter of `app.coordination.Coordinator`: head notifications (pub/sub), an
idempotency cache and fair write leases shared by the replicas of one database.

What each of these buys, and why none of it can change an answer, is explained with the
port in `paceline_server/app/coordination.py`. This adapter never fails a request: a
Redis error is logged, counted and answered as if Redis were not configured, and Redis
is left alone for a few seconds before it is tried again. `coordinator_from_settings` is
the start-up wiring: the REST app and the CLI hand its result to `PacelineService`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from paceline_server.app.coordination import (
    CommitNotice,
    CoordinationStats,
    Coordinator,
    HeadListener,
    LocalCoordinator,
)
from paceline_server.settings import Settings

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


#: KEYS lock, queue (token -> ticket), alive (token -> deadline ms), ticket counter.
#: ARGV token, lease ms, waiter ms, idle ms. Returns 1 when `token` now holds the lease,
#: else 0 after queueing `token` (FIFO by ticket; a waiter that stops asking for
#: `waiter ms` leaves the queue, so a dead replica cannot block it).
_ACQUIRE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[2], dead)
  redis.call('ZREM', KEYS[3], dead)
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
if (head == nil or head == ARGV[1])
    and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), ARGV[1])
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return 0
"""
#: KEYS lock; ARGV token, channel, message. Compare-and-delete (a lease that expired and
#: was taken by another replica is left alone), then wake the waiters.
_RELEASE = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return released
"""
#: KEYS lock; ARGV token, lease ms. Compare-and-extend.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
#: KEYS queue, alive; ARGV token. A waiter that gives up leaves the queue.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class _Signals:
    """Per-curriculum generation counters: a lease waiter sleeps until the curriculum's
    next head/release message (or its poll interval) without missing one that arrives
    between its last try and its sleep."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._gen: dict[str, int] = {}

    def generation(self, name: str) -> int:
        with self._cond:
            return self._gen.get(name, 0)

    def bump(self, name: str) -> None:
        with self._cond:
            self._gen[name] = self._gen.get(name, 0) + 1
            if len(self._gen) > 10_000:  # bounded: a reset only costs one poll interval
                self._gen = {name: self._gen[name]}
            self._cond.notify_all()

    def wait(self, name: str, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._gen.get(name, 0) != seen, timeout)


class RedisCoordinator:
    """Head notifications (pub/sub), idempotency cache and fair write leases on Redis.

    Keys live under `prefix` (one prefix per database: the keys describe its logs); the
    keys of one curriculum share a Redis Cluster hash tag. `lease_ttl_s=0` turns leases
    off (writers then queue on the database row lock, as without Redis).
    """

    caches_acks = True

    def __init__(self, url: str, *, prefix: str = "paceline:", ack_ttl_s: int = 3600,
                 lease_ttl_s: float = 2.0, timeout_s: float = 0.5,
                 retry_after_s: float = 2.0, poll_s: float = 0.05) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = prefix
        self.ack_ttl_s = ack_ttl_s
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        #: A waiter gives up (and writes on the row lock alone) after the lease TTL and a
        #: little more: by then even a dead holder's lease has expired.
        self.lease_wait_s = lease_ttl_s + 1.0
        self.retry_after_s = retry_after_s
        self.poll_s = poll_s
        self.waiter_ms = max(500, int(poll_s * 10_000))
        self.channel = f"{prefix}heads"
        #: The subscription is pinged after this long without a message, and given up
        #: (subscribed again) when the ping is not answered within as long again.
        self.listen_ping_s = max(1.0, 10 * timeout_s)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        # One immediate retry: a pooled connection broken by a Redis restart is replaced
        # at once; a Redis that stays down costs two fast refusals, then the breaker. A
        # timeout is not retried: a stalled Redis costs one `timeout_s`, as documented.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._leave = self._redis.register_script(_LEAVE)
        self._signals = _Signals()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()
        self._down_until = 0.0
        self._up = True
        self._fallbacks: dict[tuple[str, str], int] = {}
        self._leases: dict[str, int] = {}
        self._leases_lost = 0
        self._hits = 0
        self._catch_ups = 0
        self._caught_up_events = 0
        self._held: dict[str, str] = {}  # token -> curriculum, for the renewer
        self._heads: dict[str, tuple[int, int]] = {}  # name -> (stamp, seq) to catch up
        self._heads_ready = threading.Condition(self._guard)
        self._on_head: HeadListener | None = None

    # ------------------------------------------------------------- keys
    def _ack_key(self, name: str, stamp: int, key: str) -> str:
        return f"{self.prefix}ack:{{{name}}}:{stamp}:{key}"

    def _lease_keys(self, name: str) -> list[str]:
        return [f"{self.prefix}lease{part}:{{{name}}}"
                for part in ("", "-queue", "-alive", "-ticket")]

    # ------------------------------------------------------------- failure handling
    def _call(self, operation: str, fn: Callable[[], _T], default: _T) -> _T:
        """Run one Redis operation; on failure (or while Redis is marked down) count it
        and return `default`: the caller carries on without Redis."""
        if time.monotonic() < self._down_until:
            self._count_fallback(operation, "down")
            return default
        try:
            result = fn()
        except self._errors as exc:
            self._failed(operation, exc)
            return default
        if not self._up:
            self._recovered()
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        """Count a failed call, warn once per outage, leave Redis alone for a while."""
        self._count_fallback(operation, "error")
        with self._guard:
            self._down_until = time.monotonic() + self.retry_after_s
            was_up, self._up = self._up, False
        if was_up:
            _log.warning("Redis unavailable (%s during %s: %s); continuing on the database "
                         "alone, retrying Redis in %g s", type(exc).__name__, operation, exc,
                         self.retry_after_s)

    def _recovered(self) -> None:
        with self._guard:
            was_down, self._up = not self._up, True
        if was_down:
            _log.warning("Redis is reachable again; coordination resumed")

    def _count_fallback(self, operation: str, reason: str) -> None:
        with self._guard:
            self._fallbacks[(operation, reason)] = self._fallbacks.get(
                (operation, reason), 0) + 1

    def _count_lease(self, outcome: str) -> None:
        with self._guard:
            self._leases[outcome] = self._leases.get(outcome, 0) + 1

    # ------------------------------------------------------------- lifecycle
    def start(self, on_head: HeadListener) -> None:
        if self._threads:
            raise RuntimeError("coordinator already started")
        self._on_head = on_head
        targets: list[tuple[str, Callable[[], None]]] = [
            ("paceline-heads-listener", self._listen),
            ("paceline-catch-up", self._catch_up_loop)]
        if self.lease_ttl_ms > 0:
            targets.append(("paceline-lease-renewer", self._renew_loop))
        for thread_name, target in targets:
            thread = threading.Thread(target=target, name=thread_name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._guard:
            self._heads_ready.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._redis.close()

    # ------------------------------------------------------------- notifications
    def _listen(self) -> None:
        """Subscribe to the heads channel; after Redis drops, subscribe again once the
        breaker allows (meanwhile requests catch up from the database inline)."""
        while not self._closed.is_set():
            pause = self._down_until - time.monotonic()
            if pause > 0:
                self._closed.wait(pause)
                continue
            # redis < 8.2 leaves pubsub() untyped, 8.2 types it: the ignore fits both.
            pubsub = self._redis.pubsub(  # type: ignore[no-untyped-call, unused-ignore]
                ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                if not self._up:
                    self._recovered()
                heard, pinged = time.monotonic(), None
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.25)
                    now = time.monotonic()
                    if message is not None:
                        heard, pinged = now, None
                        if message.get("type") == "message":
                            self._dispatch(message["data"])
                    elif pinged is None and now - heard > self.listen_ping_s:
                        # A connection whose peer went silent just answers nothing, and
                        # the replica stopped hearing other replicas' heads for good.
                        pubsub.ping("paceline-listener")
                        pinged = now
                    elif pinged is not None and now - pinged > self.listen_ping_s:
                        raise ConnectionError(  # an OSError: handled as Redis going away
                            f"no answer to a PING on the subscription to {self.channel} "
                            f"within {self.listen_ping_s:g} s")
            except self._errors as exc:
                self._failed("subscribe", exc)
            finally:
                with suppress(*self._errors):
                    pubsub.close()

    def _dispatch(self, data: bytes) -> None:
        # A malformed message is ignored: one that escaped would end the listener thread,
        # and the replica would never hear another head.
        try:
            message = json.loads(data)
            name = str(message["n"])
            head = (int(message["c"]), int(message["s"])) if (
                "s" in message and "c" in message) else None
        except (ValueError, KeyError, TypeError, OverflowError):
            _log.warning("ignored a malformed message on %s: %r", self.channel, data[:200])
            return
        self._signals.bump(name)  # a head or a release: lease waiters try again
        if head is not None:
            stamp, seq = head
            with self._guard:
                known = self._heads.get(name)
                if known is None or known[0] != stamp or known[1] < seq:
                    self._heads[name] = (stamp, seq)
                    self._heads_ready.notify()

    def _catch_up_loop(self) -> None:
        """Fold announced tails on this thread, apart from the listener, so a waiting
        writer's wake-up never waits behind a fold."""
        while True:
            with self._guard:
                self._heads_ready.wait_for(lambda: bool(self._heads) or self._closed.is_set())
                if self._closed.is_set():
                    return
                heads, self._heads = self._heads, {}
            for name, (stamp, seq) in heads.items():
                try:
                    folded = self._on_head(name, stamp, seq) if self._on_head else 0
                except Exception:  # a request will catch up inline instead
                    _log.debug("background catch-up of %r failed", name, exc_info=True)
                    continue
                if folded:
                    with self._guard:
                        self._catch_ups += 1
                        self._caught_up_events += folded

    # ------------------------------------------------------------- idempotency cache
    def cached_ack(self, name: str, stamp: int, key: str) -> tuple[int, bytes] | None:
        raw = self._call("ack_get", lambda: self._redis.get(self._ack_key(name, stamp, key)),
                         None)
        if raw is None:
            return None
        try:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            seq, digest = text.split(":", 1)
            hit = (int(seq), bytes.fromhex(digest))
        except ValueError:
            return None
        with self._guard:
            self._hits += 1
        return hit

    # ------------------------------------------------------------- leases
    @contextmanager
    def exclusive(self, name: str) -> Iterator[CommitNotice]:
        token = uuid.uuid4().hex if self.lease_ttl_ms > 0 else None
        if token is not None and not self._take_lease(name, token):
            token = None
        if token is not None:
            with self._guard:
                self._held[token] = name
        notice = CommitNotice()
        try:
            yield notice
        finally:
            with self._guard:  # False when the renewer found the lease lost (counted)
                held = token is not None and self._held.pop(token, None) is not None
            self._announce(name, token, notice, count_lost=held)

    def _take_lease(self, name: str, token: str) -> bool:
        """Wait in the curriculum's FIFO queue for the lease. False: write without it
        (Redis down, or the wait budget spent), which the row lock makes safe."""
        keys = self._lease_keys(name)
        args: list[str | int] = [token, self.lease_ttl_ms, self.waiter_ms, 60_000]
        deadline = time.monotonic() + self.lease_wait_s
        while True:
            seen = self._signals.generation(name)
            got = self._call("lease", lambda: self._acquire(keys=keys, args=args), None)
            if got is None:
                self._count_lease("unavailable")
                return False
            if int(got) == 1:
                self._count_lease("acquired")
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._call("lease", lambda: self._leave(keys=keys[1:3], args=[token]), None)
                self._count_lease("timeout")
                _log.info("no write lease for %r after %.1f s; writing on the row lock "
                          "alone", name, self.lease_wait_s)
                return False
            self._signals.wait(name, seen, min(self.poll_s, remaining))

    def _announce(self, name: str, token: str | None, notice: CommitNotice, *,
                  count_lost: bool) -> None:
        """One round trip: cache the acks, publish the head, release the lease."""
        message: dict[str, Any] = {"n": name}
        if notice.seq is not None and notice.stamp is not None:
            message.update(c=notice.stamp, s=notice.seq)
        if token is None and "s" not in message:
            return
        payload = json.dumps(message, separators=(",", ":"))

        def send() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            assert notice.stamp is not None or not notice.acks
            for key, seq, digest in notice.acks:
                pipe.set(self._ack_key(name, notice.stamp or 0, key),
                         f"{seq}:{digest.hex()}", ex=self.ack_ttl_s)
            if token is not None:
                # EVAL with the source, not a registered script: in a pipeline redis-py
                # would first ask SCRIPT EXISTS, a second round trip on every commit.
                pipe.eval(_RELEASE, 1, self._lease_keys(name)[0], token, self.channel,
                          payload)
            else:
                pipe.publish(self.channel, payload)
            return pipe.execute()

        results = self._call("announce", send, None)
        if results is not None and count_lost and int(results[-1]) == 0:
            with self._guard:
                self._leases_lost += 1

    def _renew_loop(self) -> None:
        """Extend held leases every third of their TTL: a long commit keeps its lease, a
        dead replica's lease expires within one TTL."""
        while not self._closed.wait(self.lease_ttl_ms / 3000):
            with self._guard:
                held = list(self._held.items())
            for token, name in held:
                def renew(token: str = token, name: str = name) -> Any:
                    return self._renew(keys=self._lease_keys(name)[:1],
                                       args=[token, self.lease_ttl_ms])

                kept = self._call("lease_renew", renew, None)
                if kept is not None and int(kept) == 0:
                    with self._guard:
                        if self._held.pop(token, None) is not None:
                            self._leases_lost += 1

    # ------------------------------------------------------------- metrics
    def stats(self) -> CoordinationStats:
        with self._guard:
            return CoordinationStats(
                "redis", self._up and time.monotonic() >= self._down_until,
                dict(self._fallbacks), dict(self._leases), self._leases_lost, self._hits,
                self._catch_ups, self._caught_up_events)


def coordinator_from_settings(settings: Settings) -> Coordinator:
    """Redis when `PACELINE_REDIS_URL` is set, else the database alone."""
    if not settings.redis_url:
        return LocalCoordinator()
    return RedisCoordinator(settings.redis_url, prefix=settings.redis_prefix,
                            ack_ttl_s=settings.redis_idempotency_ttl_s,
                            lease_ttl_s=settings.redis_lease_ttl_s,
                            timeout_s=settings.redis_timeout_s)
