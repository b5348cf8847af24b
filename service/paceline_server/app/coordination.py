"""Coordination between service replicas: what Redis adds on top of the database.

The database (the event log with its unique (curriculum, seq) and (curriculum,
idempotency key) constraints, the curriculum row lock, snapshots) is the only source of
truth, and it alone makes any number of replicas correct: every request reads the head
from it, a writer locks the curriculum row, and an event is acknowledged only after it
committed. A `Coordinator` only makes replicas *faster* together, so everything it says
may be stale or missing without changing an answer:

- **Head notifications.** After each committed group the writer publishes
  (curriculum, created_at stamp, head seq); every replica's listener folds the new tail
  into its cached engine in the background, so a request rarely finds its engine behind.
- **Idempotency cache.** key -> (seq, payload digest), written after the commit and read
  before queueing a report, so a client's retry is answered without taking any lock.
- **Write leases.** A per-curriculum lease (fair FIFO queue, token, TTL, renewed,
  compare-and-delete release) around the group commit, so writers of different replicas
  wait on Redis instead of each holding a PostgreSQL connection in a row-lock wait. The
  row lock still fences a writer whose lease expired.

This module is the port the use cases are written against: the `Coordinator` protocol,
what crosses it, and `LocalCoordinator`, which does none of the above (no Redis
configured: PostgreSQL alone, correct and slower). The Redis implementation is an adapter
outside the application layer (`paceline_server/adapters/redis_coordination.py`), handed
to `PacelineService` by whoever starts the process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

#: Called by a coordinator's background thread when another writer committed up to `seq`
#: in curriculum `name` (created at `stamp`); returns how many events it folded.
HeadListener = Callable[[str, int, int], int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def curriculum_stamp(created_at: datetime) -> int:
    """Microseconds since the epoch: tells a recreated curriculum of the same name apart
    in keys and messages shared by replicas (the store keeps created_at exactly)."""
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return (created_at - _EPOCH) // timedelta(microseconds=1)


@dataclass
class CommitNotice:
    """What a group commit tells the other replicas when its exclusive section ends."""

    stamp: int | None = None
    seq: int | None = None
    #: (idempotency key, acknowledged seq, sha-256 of the payload) of each committed report
    acks: list[tuple[str, int, bytes]] = field(default_factory=list)

    def record(self, stamp: int, seq: int, acks: Sequence[tuple[str, int, bytes]]) -> None:
        self.stamp, self.seq, self.acks = stamp, seq, list(acks)


@dataclass(frozen=True)
class CoordinationStats:
    """Counters for /metrics (cumulative since the process started)."""

    backend: str  # "database" or "redis"
    redis_up: bool
    #: (operation, reason) -> Redis calls answered without Redis; reason "error" (the
    #: call failed) or "down" (not tried: Redis failed moments ago)
    fallbacks: dict[tuple[str, str], int]
    #: lease requests by outcome: "acquired", "timeout" (waited the budget, wrote on the
    #: row lock alone) or "unavailable" (Redis down)
    leases: dict[str, int]
    leases_lost: int  # renewal or release found the lease taken over (it had expired)
    idempotency_hits: int
    catch_ups: int  # background catch-ups that folded at least one event
    caught_up_events: int


class Coordinator(Protocol):
    """How replicas help each other; see the module docstring. Thread-safe. Nothing it
    answers may change a result: every method may say "unknown" (None, no lease)."""

    #: Whether `cached_ack` can answer (callers skip hashing payloads otherwise).
    caches_acks: bool

    def start(self, on_head: HeadListener) -> None:
        """Begin delivering other writers' heads to `on_head` (background thread)."""

    def cached_ack(self, name: str, stamp: int, key: str) -> tuple[int, bytes] | None:
        """(seq, payload digest) of a report acknowledged earlier under `key`, if known."""

    def exclusive(self, name: str) -> AbstractContextManager[CommitNotice]:
        """The section in which this process commits a group to `name`: waits for the
        curriculum's lease (when there is one) and, on exit, publishes what the notice
        recorded and releases the lease. Never raises for coordination reasons."""

    def stats(self) -> CoordinationStats:
        """Counters for /metrics."""

    def close(self) -> None:
        """Stop background threads and drop connections (idempotent)."""


class LocalCoordinator:
    """No coordination channel: the database alone (or one process on SQLite).

    Requests catch their cached engine up from the log inline, writers of different
    processes queue on the curriculum row lock, retries are found in the log."""

    caches_acks = False

    def start(self, on_head: HeadListener) -> None:
        return None

    def cached_ack(self, name: str, stamp: int, key: str) -> tuple[int, bytes] | None:
        return None

    @contextmanager
    def exclusive(self, name: str) -> Iterator[CommitNotice]:
        yield CommitNotice()

    def stats(self) -> CoordinationStats:
        return CoordinationStats("database", False, {}, {}, 0, 0, 0, 0)

    def close(self) -> None:
        return None
