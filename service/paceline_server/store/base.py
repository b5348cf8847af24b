"""The storage contract: an ordered, append-only event log per curriculum plus snapshots.

State is never stored directly: a report is an *event* with a per-curriculum sequence
number (1, 2, 3, ...; unique per curriculum, which is the optimistic-concurrency guard),
and the engine's state is a fold of those events. Snapshots (engine bytes at some
sequence number) make loading O(tail). Any process can rebuild any curriculum from
(latest snapshot + events after it), which gives crash recovery, shared curricula and
multi-replica scale-out from one mechanism (like Optuna's journal storage).

Implementations must guarantee, and the contract tests in `tests/store/` check for every
backend:
- `writer(name)` serialises writers of one curriculum across threads *and* processes
  (row lock on PostgreSQL, database write lock on SQLite): inside the block the head
  sequence number cannot move under you, and everything appended commits atomically at
  the end of the block or not at all (an exception inside the block rolls back).
- An appended event is durable once the block exits without error (the ack).
- An idempotency key is unique per curriculum: `find_by_key` inside the writer sees
  every committed event's key.
- Readers never block writers for long and always see a prefix of the log.
- A snapshot given as pieces is stored in chunks of bounded size and read back as a
  stream (`snapshot_stream`) from one consistent read, so neither side holds its encoded
  whole (the memory bound of docs/reliability.md); one given as `bytes`, and one written
  by a version before chunks existed, reads back the same way. A snapshot whose pieces
  fail is rolled back alone, never the rest of its writer block.
- Errors raised are domain errors (`paceline_server.domain.errors`):
  `CurriculumNotFound`, `CurriculumExists` (name taken), `RunNotFound`; a database that
  cannot be reached raises `Unavailable`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

#: What reading a field off a spec stored unreadable raises.
_UNREADABLE = (KeyError, TypeError, ValueError)


@dataclass(frozen=True)
class CurriculumRecord:
    name: str
    spec: dict[str, Any]  # CurriculumSpec.to_dict() of the canonical spec
    created_at: datetime
    head_seq: int  # sequence number of the last committed event (0 = none)

    @property
    def distributions(self) -> list[str]:
        """Distribution names in layout order (read off the stored spec, no engine)."""
        try:
            layout = self.spec["layout"]
            if "distributions" in layout:
                return [str(d["name"]) for d in layout["distributions"]]
            return [str(n) for n in layout["names"]]
        except _UNREADABLE:  # a spec stored unreadable (see domain/stored_json.py)
            return []

    @property
    def num_samples(self) -> int:
        try:
            layout = self.spec["layout"]
            if "distributions" in layout:
                return sum(int(d["size"]) for d in layout["distributions"])
            return len(layout["labels"])
        except _UNREADABLE:
            return 0

    @property
    def objectives(self) -> list[str]:
        try:
            return [str(o["name"]) for o in self.spec["objectives"]]
        except _UNREADABLE:
            return []


@dataclass(frozen=True)
class CurriculumHead:
    """The cheap part of a curriculum row: enough to bring a cached engine up to date."""

    name: str
    created_at: datetime
    head_seq: int


class RunKey(NamedTuple):
    """Where a run stands in its curriculum's listing: oldest first, a tie broken by id.
    Unique (a run id is unique per curriculum), so a page can start strictly after one."""

    created_at: datetime
    run_id: str


@dataclass(frozen=True)
class RunRecord:
    curriculum: str
    run_id: str
    created_at: datetime
    last_heartbeat: datetime
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> RunKey:
        return RunKey(self.created_at, self.run_id)


@dataclass(frozen=True)
class RunSummary:
    """A curriculum's runs counted in the database, not read: what a listing shows."""

    runs: int
    stale: int  # of them, last heartbeat at or before the cutoff asked for
    last_heartbeat: datetime | None  # the newest (None without runs)


@dataclass(frozen=True)
class EventRecord:
    seq: int
    kind: str  # "report"
    run_id: str
    step: int
    idempotency_key: str | None
    payload: bytes  # opaque to the store (the app encodes reports as .npz)
    created_at: datetime
    #: Set only on what a duplicate check found of a pruned event: its payload is gone
    #: (empty) and this is `payload_digest` of it.
    digest: bytes | None = None


def payload_digest(payload: bytes) -> bytes:
    """SHA-256 of an event payload: what stays of a pruned event's content."""
    return hashlib.sha256(payload).digest()


@dataclass(frozen=True)
class EventProgress:
    """An event's position and the history row stored with it (None: none stored)."""

    seq: int
    step: int
    created_at: datetime
    progress: bytes | None


@dataclass(frozen=True)
class SnapshotRecord:
    seq: int  # state after folding events 1..seq
    state: bytes
    created_at: datetime


@dataclass(frozen=True)
class SnapshotStream:
    """A snapshot read piece by piece: `chunks` yields its bytes in order (concatenated,
    they are `SnapshotRecord.state`) and is valid only inside `Store.snapshot_stream`."""

    seq: int
    created_at: datetime
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class HistoryCheckpoint:
    """A chunk of a curriculum's per-report history rows (first_seq..last_seq)."""

    first_seq: int
    last_seq: int
    rows: bytes  # opaque to the store (the app packs them: `domain.history.pack_rows`)
    created_at: datetime


@dataclass(frozen=True)
class BatchRecord:
    run_id: str
    step: int
    seq: int  # head sequence number the batch was computed at
    payload: bytes
    part: int = 0  # 0: the step's batch; 1, 2, ...: its refills (dynamic sampling)


class CurriculumWriter(ABC):
    """Handle valid only inside `Store.writer(name)`: the curriculum is locked."""

    @property
    @abstractmethod
    def head_seq(self) -> int:
        """The last committed (or appended in this block) sequence number."""

    @property
    @abstractmethod
    def created_at(self) -> datetime:
        """When the locked curriculum was created: tells it apart from an earlier one of
        the same name (a cached engine checks it is still the curriculum's)."""

    @abstractmethod
    def find_by_key(self, idempotency_key: str) -> EventRecord | None:
        """The event committed earlier with this key, if any."""

    @abstractmethod
    def find_report(self, run_id: str, step: int) -> EventRecord | None:
        """The first report event committed (or appended in this block) for (run, step),
        if any: a step is folded once, whatever idempotency key a repeat carries."""

    @abstractmethod
    def append(self, kind: str, run_id: str, step: int, idempotency_key: str | None,
               payload: bytes, *, checked: bool = False, progress: bytes | None = None,
               created_at: datetime | None = None) -> int:
        """Append an event at head_seq + 1 and return its sequence number.

        A key already in the log raises IdempotencyConflict; `checked=True` says the
        caller has just looked the key up with `find_by_key` in this block, which spares
        the second lookup. `progress` is the history row of the state after this event
        (bytes the app packs, opaque to the store), stored in the same row and read back
        by `Store.event_progress`; None stores none (a history then replays the event).
        `created_at` is when the event happened, now by default; an import of a new
        curriculum passes the exported log's times."""

    @abstractmethod
    def put_snapshot(self, seq: int, state: bytes | Iterable[bytes | memoryview]) -> None:
        """Store engine state after event `seq` (replacing older snapshots beyond the
        configured number kept). `state` is the snapshot's bytes, whole or as pieces of
        any sizes: pieces are consumed one at a time and stored in bounded chunks, so the
        encoded whole is never in memory (the snapshot memory bound). A failure while
        consuming them (MemoryError, say) leaves no partial snapshot and leaves the
        block's other writes intact; the caller may carry on and commit."""

    @abstractmethod
    def get_batch(self, run_id: str, step: int) -> BatchRecord | None:
        """The batch stored for (run, step), if any."""

    @abstractmethod
    def put_batch(self, record: BatchRecord) -> BatchRecord:
        """Store an issued batch in this transaction (it commits, durably, with the
        block); when (run, step) is stored already, return the stored one (first writer
        wins, as `Store.put_batch`)."""

    @abstractmethod
    def get_parts(self, run_id: str, step: int) -> list[BatchRecord]:
        """The refill parts (part >= 1) stored for (run, step), in part order."""

    @abstractmethod
    def put_part(self, record: BatchRecord) -> BatchRecord:
        """Store refill part `record.part` (>= 1) of (run, step) in this transaction; when
        it is stored already, return the stored one (first writer wins)."""

    @abstractmethod
    def put_history(self, first_seq: int, last_seq: int, rows: bytes) -> None:
        """Store the history rows of reports first_seq..last_seq in this transaction
        (1 <= first_seq <= last_seq <= head_seq, else ValueError), replacing a chunk that
        ends at the same `last_seq` and dropping those that lie inside first..last (so
        smaller chunks can be merged into one). Chunks are kept when events are pruned."""

    @abstractmethod
    def last_history_seq(self, before: int) -> int:
        """The last_seq of the newest history chunk ending before `before` (0: none), so
        a writer can tell whether its chunk continues the stored ones."""

    @abstractmethod
    def event_times(self, first_seq: int, last_seq: int) -> list[tuple[int, datetime]]:
        """(seq, created_at) of the events first_seq..last_seq still in the log (this
        block's appends included), in order: the times a history row carries."""


class CurriculumImporter(CurriculumWriter):
    """Handle valid only inside `Store.importer(...)`: a writer that can also attach runs
    in its transaction, so an import is committed whole or not at all."""

    @abstractmethod
    def add_run(self, run_id: str, metadata: Mapping[str, Any], created_at: datetime,
                last_heartbeat: datetime) -> bool:
        """Attach a run unless one of that id is attached; True when it was added (a
        present run is left exactly as it is)."""


class Store(ABC):
    """Persistence for curricula, runs, events, snapshots and issued batches."""

    # ---------------------------------------------------------------- lifecycle
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise if the database is unreachable."""

    # ---------------------------------------------------------------- curricula
    @abstractmethod
    def create_curriculum(self, name: str, spec: Mapping[str, Any]) -> CurriculumRecord:
        """Insert a curriculum; raises CurriculumExists when the name is taken."""

    @abstractmethod
    def get_curriculum(self, name: str) -> CurriculumRecord:
        """Raises CurriculumNotFound."""

    @abstractmethod
    def head(self, name: str) -> CurriculumHead:
        """(created_at, head_seq) without the spec; raises CurriculumNotFound."""

    @abstractmethod
    def heads(self, names: Iterable[str]) -> dict[str, CurriculumHead]:
        """The heads of those of `names` that exist, in one read: how a process learns
        which of the curricula it holds were deleted through another one."""

    @abstractmethod
    def list_curricula(self, limit: int = 100, offset: int = 0,
                       after: str | None = None) -> list[CurriculumRecord]:
        """Ordered by name (by code point), `limit` of them from `offset`; with `after`,
        only those whose name follows it (a page that continues where one ended, however
        many were created or deleted before that point meanwhile)."""

    @abstractmethod
    def delete_curriculum(self, name: str) -> None:
        """Delete the curriculum and everything that belongs to it."""

    # ---------------------------------------------------------------- runs
    @abstractmethod
    def add_run(self, curriculum: str, run_id: str, metadata: Mapping[str, Any],
                now: datetime) -> RunRecord: ...

    @abstractmethod
    def get_run(self, curriculum: str, run_id: str) -> RunRecord:
        """Raises RunNotFound."""

    @abstractmethod
    def list_runs(self, curriculum: str, limit: int | None = None, offset: int = 0,
                  after: RunKey | None = None, *,
                  created_at: datetime | None = None) -> list[RunRecord]:
        """Ordered by `RunRecord.key` (created_at, then run_id by code point), `limit` of
        them from `offset` (None: all); with `after`, only those whose key follows it.
        With `created_at`, the runs of the curriculum created then: one of that name
        created at another time (deleted and created again since, so the keys of the
        earlier one's pages mean nothing in it) raises Conflict, read in the same
        snapshot as the runs."""

    @abstractmethod
    def run_summary(self, curriculum: str, stale_at: datetime) -> RunSummary:
        """How many runs `curriculum` has, how many last beat at or before `stale_at`,
        and the newest heartbeat: one aggregate query, whatever the number of runs.
        Raises CurriculumNotFound."""

    @abstractmethod
    def heartbeat(self, curriculum: str, run_id: str, now: datetime) -> RunRecord:
        """Record that the run is alive; raises RunNotFound."""

    # ---------------------------------------------------------------- events
    @abstractmethod
    def writer(self, name: str) -> AbstractContextManager[CurriculumWriter]:
        """Lock the curriculum for writing (see the module docstring)."""

    @abstractmethod
    def importer(self, name: str, spec: Mapping[str, Any] | None = None,
                 ) -> AbstractContextManager[CurriculumImporter]:
        """Lock a curriculum for an import, as `writer` does; with `spec`, create it in the
        same transaction first (CurriculumExists when the name is taken). Everything done
        through the handle commits at the end of the block or not at all."""

    @abstractmethod
    def events(self, name: str, after_seq: int = 0,
               limit: int | None = None) -> Iterator[EventRecord]:
        """Committed events with seq > after_seq in order."""

    @abstractmethod
    def latest_snapshot(self, name: str, at_most: int | None = None) -> SnapshotRecord | None:
        """The newest snapshot (with seq <= at_most when given), its bytes joined whole;
        `snapshot_stream` reads a large one without that copy."""

    @contextmanager
    def snapshot_stream(self, name: str,
                        at_most: int | None = None) -> Iterator[SnapshotStream | None]:
        """The newest snapshot (seq <= at_most when given) as a stream of chunks read
        within the block, from one consistent read (a snapshot pruned meanwhile is still
        read whole); None when there is none. Backends override this default, which
        reads the whole snapshot first."""
        record = self.latest_snapshot(name, at_most)
        yield (None if record is None
               else SnapshotStream(record.seq, record.created_at, iter([record.state])))

    @abstractmethod
    def prune_events(self, name: str, up_to_seq: int,
                     digest: Callable[[bytes], bytes] = payload_digest) -> int:
        """Delete events with seq <= up_to_seq (only when a snapshot covers them),
        keeping `digest` of each payload for the duplicate checks; returns how many were
        deleted."""

    # ---------------------------------------------------------------- batches
    @abstractmethod
    def get_batch(self, name: str, run_id: str, step: int) -> BatchRecord | None: ...

    def lookup_batch(self, name: str, run_id: str,
                     step: int) -> tuple[CurriculumHead, BatchRecord | None]:
        """The curriculum's head and the batch stored for (run, step), if any: the read
        half of serving a batch. Backends answer it from one read snapshot."""
        return self.head(name), self.get_batch(name, run_id, step)

    @abstractmethod
    def put_batch(self, name: str, record: BatchRecord, *, durable: bool = True,
                  created_at: datetime | None = None) -> BatchRecord:
        """Store an issued batch; when (run, step) was stored concurrently, return the
        stored one instead (first writer wins). With `created_at`, the batch was
        proposed for the curriculum created then: one of that name created since (it was
        deleted and created again meanwhile) is refused with Unavailable (retryable) and
        nothing is stored.

        `durable=False` may return before the write is on stable storage: the batch
        survives a crash of the process but not necessarily of the machine or database
        server (SQLite `synchronous=NORMAL` for this commit, PostgreSQL
        `synchronous_commit=off`); a later durable commit makes it durable too."""

    # ---------------------------------------------------------------- history
    @abstractmethod
    def put_history(self, name: str, first_seq: int, last_seq: int, rows: bytes, *,
                    created_at: datetime | None = None) -> None:
        """`CurriculumWriter.put_history` in a transaction of its own, for rows computed
        outside a writer (filling a range no writer recorded); committed reports only.
        With `created_at`, the rows were computed from the curriculum created then: one
        of that name created since is refused with Unavailable and nothing is stored, as
        in `put_batch` (a background writer's rows of a deleted curriculum would
        otherwise land in the history of its successor)."""

    @abstractmethod
    def event_progress(self, name: str, after_seq: int,
                       limit: int | None = None) -> list[EventProgress]:
        """The history rows stored with the events (`CurriculumWriter.append(progress=)`)
        of seq > after_seq, in seq order, at most `limit` (progress None where an event
        has none); without the events' payloads, so reading a tail costs O(rows). Raises
        CurriculumNotFound."""

    @abstractmethod
    def history_checkpoints(self, name: str, after_seq: int = 0,
                            max_bytes: int | None = None) -> list[HistoryCheckpoint]:
        """The history chunks ending after `after_seq`, in last_seq order (they may
        overlap or leave gaps: the reader chains them); raises CurriculumNotFound. With
        `max_bytes`, only the first of them whose rows add up to at most that many bytes,
        and at least one: a reader takes a long history a batch at a time."""
