"""In-process cache of curriculum engines, kept in step with the event log.

An engine cached at sequence number s is brought to the log's head by folding events
(s, head]; without a cached engine the newest snapshot is loaded and the tail replayed.
So any process (replica) serves any curriculum exactly, and the cache is only a speed-up:
dropping it never changes an answer. With Redis, other replicas' commits are announced
and folded in the background (`PacelineService._fold_announced`), off the request path.

A snapshot this code cannot read (`StateCorrupt`: bytes that do not decode, or a
`StateVersionError`, a strategy state of a version it cannot migrate) is set aside: the
engine is rebuilt by replaying the log from the first event, as long as the log still
holds it (pruned logs cannot be replayed).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from paceline_server.app.codec import decode_report
from paceline_server.domain.errors import (
    InvalidSpec,
    StateCorrupt,
    StateTooLarge,
    Unavailable,
)
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.engine import CurriculumEngine
from paceline_server.engine.engine import HISTORY
from paceline_server.engine.health import WINDOW as HEALTH_WINDOW
from paceline_server.store.base import CurriculumHead, CurriculumRecord, Store
from paceline_server.strategies.posteriors import table_bytes, table_keeps_rates
from paceline_server.strategies.registry import build_sampler, build_weighting

_log = logging.getLogger(__name__)


@dataclass
class CachedEngine:
    created_at: datetime  # tells a recreated curriculum of the same name apart
    spec: CurriculumSpec
    engine: CurriculumEngine
    seq: int
    lock: threading.RLock
    #: Set when the engine may hold folds the log does not (a failed commit): the next
    #: `catch_up` reloads it from the store. Keeps the entry object valid for threads that
    #: already hold it, unlike dropping it from the cache.
    stale: bool = False
    #: Reports waiting for a group commit (see `PacelineService.report`), guarded by
    #: `pending_guard`; whoever holds `lock` next commits them all in one transaction.
    pending: list[Any] = field(default_factory=list)
    pending_guard: threading.Lock = field(default_factory=threading.Lock)
    #: Held by the one request of this process that leads the next group commit while it
    #: waits for the cross-replica write lease, so `lock` stays free meanwhile (batches
    #: are served and the background catch-up folds other replicas' events).
    commit_lock: threading.Lock = field(default_factory=threading.Lock)
    #: A worker thread is committing what `report_async` queued (under `pending_guard`).
    draining: bool = False
    #: Estimated bytes of the engine's state (`estimate_state_bytes`): the cache's budget
    #: counts these, not entries.
    nbytes: int = 0
    #: The batch last stored for each run of this process's requests (run_id -> (step,
    #: its indices, sorted)), so that the report of that step is checked against what
    #: was served without reading the batch back: a stored batch never changes, and a
    #: recreated curriculum gets a new entry. Set only once the batch is committed.
    served: OrderedDict[str, tuple[int, np.ndarray]] = field(default_factory=OrderedDict)
    served_guard: threading.Lock = field(default_factory=threading.Lock)

    def remember_served(self, run_id: str, step: int, indices: np.ndarray) -> None:
        """Keep (run_id, step)'s stored batch (part 0); at most `SERVED_RUNS` runs."""
        ordered = np.sort(indices)
        with self.served_guard:
            self.served[run_id] = (step, ordered)
            self.served.move_to_end(run_id)
            while len(self.served) > SERVED_RUNS:
                self.served.popitem(last=False)

    def served_batch(self, run_id: str, step: int) -> np.ndarray | None:
        """The sorted indices of (run_id, step)'s stored batch when remembered, else None
        (then the store answers)."""
        with self.served_guard:
            found = self.served.get(run_id)
        return found[1] if found is not None and found[0] == step else None


#: Runs whose last served batch a cached engine remembers (`CachedEngine.served`).
SERVED_RUNS = 256



def estimate_state_bytes(spec: CurriculumSpec) -> int:
    """The in-memory state a curriculum of `spec` holds, estimated from the spec alone
    (nothing is allocated, so a hostile spec is measured in microseconds): the sampler's
    and the weighting's own estimates, the engine's pass-rate table when kept (the parts
    it keeps: `posteriors.table_bytes`), its
    per-distribution health windows and weight history, and the layout's arrays."""
    sampler = build_sampler(spec.sampler, spec.layout, spec.objectives)
    weighting = build_weighting(spec.weighting, spec.objectives)
    n, d, k = spec.layout.num_samples, spec.layout.num_distributions, len(spec.objectives)
    total = sampler.state_bytes() + weighting.state_bytes() + spec.layout.state_bytes()
    if sampler.uses_posteriors or spec.zero_variance is not None:
        total += table_bytes(n, rates=table_keeps_rates(sampler),
                             streak=spec.zero_variance is not None)
    total += 8 * d * (3 * HEALTH_WINDOW + 8) + 8 * HISTORY * (k + 2)
    return total


def cached_bytes(spec: CurriculumSpec, engine: CurriculumEngine) -> int:
    """What the cache counts for a loaded engine: its estimate, or the bytes its state's
    arrays really hold when more (a plug-in sampler or weighting may estimate less than
    it keeps; counting its estimate alone let such engines take the memory the budget
    `PACELINE_ENGINE_CACHE_BYTES` is meant to bound). A plug-in state the codec cannot
    read through (a field of a type it does not write) is counted at its estimate: it
    is served all the same, only never snapshotted (`CurriculumEngine.snapshot_pieces`)."""
    estimate = estimate_state_bytes(spec)
    try:
        real = math.ceil(engine.state_bytes_per_sample() * spec.layout.num_samples)
    except TypeError:
        return estimate
    return max(estimate, real)


def check_distributions(spec: CurriculumSpec, limit: int) -> None:
    """InvalidSpec when `spec` has more than `limit` distributions."""
    count = spec.layout.num_distributions
    if count > limit:
        raise InvalidSpec(
            f"curriculum {spec.name!r} has {count} distributions, over this service's "
            f"limit of {limit} (PACELINE_MAX_DISTRIBUTIONS): group sources into fewer "
            "distributions; each sample is still sampled on its own",
            {"field": "layout", "distributions": count, "limit": limit})


def check_state_budget(spec: CurriculumSpec, budget: int) -> int:
    """The estimate of `spec`'s state, or StateTooLarge when it is over `budget`."""
    estimate = estimate_state_bytes(spec)
    if estimate > budget:
        digits = 1
        while _size(estimate, digits) == _size(budget, digits) and digits < 6:
            digits += 1  # "about 2.0 GiB, over the budget of 2.0 GiB" read as a mistake
        raise StateTooLarge(
            f"curriculum {spec.name!r} would hold about {_size(estimate, digits)} of state, "
            f"over this service's budget of {_size(budget, digits)} "
            "(PACELINE_MAX_STATE_BYTES): use "
            "fewer samples, a per-distribution sampler or a smaller window",
            {"estimate_bytes": estimate, "budget_bytes": budget,
             "num_samples": spec.layout.num_samples, "sampler": spec.sampler.kind})
    return estimate


def _size(count: int, digits: int = 1) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.{digits}f} {unit}"
    return f"{count} B"


#: Locks that serialise loads of curricula whose names hash alike (a lock per name
#: would be one more map to bound).
LOAD_STRIPES = 64


class EngineCache:
    """At most `capacity` engines and `max_bytes` of estimated state, least recently
    used dropped first; the engine just loaded always stays (a request is using it)."""

    def __init__(self, store: Store, capacity: int, max_bytes: int | None = None) -> None:
        self.store = store
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.nbytes = 0  # estimated state bytes of the cached engines
        self._entries: OrderedDict[str, CachedEngine] = OrderedDict()
        self._guard = threading.Lock()  # the entries: held for dictionary work only
        # One load of a curriculum at a time (by name's stripe), outside `_guard`: a
        # curriculum whose snapshot takes seconds to read does not stall the others.
        self._loading = [threading.Lock() for _ in range(LOAD_STRIPES)]

    def entry(self, head: CurriculumHead | CurriculumRecord) -> CachedEngine:
        """The cache entry of a curriculum (built from its snapshot on first use, which is
        the only time the spec is read); callers hold `entry.lock` while they read or
        advance it."""
        cached = self._cached(head)
        if cached is not None:
            return cached
        with self._loading[hash(head.name) % LOAD_STRIPES]:
            cached = self._cached(head)  # loaded by the request we waited for
            if cached is not None:
                return cached
            record = (head if isinstance(head, CurriculumRecord)
                      else self.store.get_curriculum(head.name))
            if record.created_at != head.created_at:  # deleted and created again since
                # `head` was read: a race the client's retry resolves (503, retryable).
                raise Unavailable("the curriculum was deleted and created again "
                                  "meanwhile; retry", {"curriculum": head.name})
            spec = CurriculumSpec.from_dict(record.spec)
            engine, seq = self._load(record.name, spec, record.head_seq)
            cached = CachedEngine(record.created_at, spec, engine, seq, threading.RLock(),
                                  nbytes=cached_bytes(spec, engine))
            with self._guard:
                previous = self._entries.pop(record.name, None)
                if previous is not None:
                    self.nbytes -= previous.nbytes
                self._entries[record.name] = cached
                self.nbytes += cached.nbytes
                while len(self._entries) > 1 and (
                        len(self._entries) > self.capacity
                        or (self.max_bytes is not None and self.nbytes > self.max_bytes)):
                    _, dropped = self._entries.popitem(last=False)
                    self.nbytes -= dropped.nbytes
            return cached

    def _cached(self, head: CurriculumHead | CurriculumRecord) -> CachedEngine | None:
        """The entry of `head`'s curriculum as created then, marked as just used."""
        return self.recent(head.name, created_at=head.created_at)

    def _load(self, name: str, spec: CurriculumSpec,
              head_seq: int) -> tuple[CurriculumEngine, int]:
        with self.store.snapshot_stream(name, at_most=head_seq) as snapshot:
            if snapshot is None:
                return CurriculumEngine(spec), 0
            try:  # decoded chunk by chunk: never the state and its bytes whole at once
                return CurriculumEngine.from_chunks(spec, snapshot.chunks), snapshot.seq
            except StateCorrupt as exc:  # of another version, or unreadable (the log is
                seq, cause = snapshot.seq, exc  # the record: a snapshot only shortens it)
        return self._replay(name, spec, seq, cause), seq

    def _replay(self, name: str, spec: CurriculumSpec, seq: int,
                cause: StateCorrupt) -> CurriculumEngine:
        """The engine at `seq` rebuilt from the event log alone, for a snapshot this code
        cannot read (a state version it cannot migrate, or bytes that do not decode, as
        a plug-in state its codec wrote but cannot read back); the cause is raised again
        when the log no longer starts at seq 1."""
        _log.warning("curriculum %r: snapshot at seq %d not readable (%s); rebuilding from "
                     "the event log", name, seq, cause)
        engine = CurriculumEngine(spec)
        folded = 0
        for event in self.store.events(name, after_seq=0, limit=seq):
            if event.seq != folded + 1:
                break
            engine.apply(decode_report(event.payload))
            folded = event.seq
        if folded != seq:
            raise type(cause)(
                f"{cause} and the event log of {name!r} no longer holds seq {folded + 1} "
                "(pruned), so the curriculum cannot be rebuilt by replay",
                {**cause.details, "replayed_to": folded, "snapshot_seq": seq}) from cause
        _log.warning("curriculum %r: rebuilt from %d events", name, folded)
        return engine

    def catch_up(self, cached: CachedEngine, name: str, head_seq: int) -> None:
        """Fold committed events (cached.seq, head_seq] (caller holds the entry lock).

        When the events right after the cached position were pruned (by another
        replica), reload from the newest snapshot instead. Should anything raise midway
        (a fold that fails part-way, out of memory, a read), the engine is marked stale
        and reloaded on next use: it may hold part of a fold, and folding that event again
        on top of it would serve and snapshot a state the log does not produce."""
        try:
            self._catch_up(cached, name, head_seq)
        except BaseException:
            cached.stale = True
            raise

    def _catch_up(self, cached: CachedEngine, name: str, head_seq: int) -> None:
        if cached.stale:
            cached.engine, cached.seq = self._load(name, cached.spec, head_seq)
            cached.stale = False
        if cached.seq >= head_seq:
            return
        for attempt in range(2):
            events = self.store.events(name, after_seq=cached.seq, limit=head_seq - cached.seq)
            for event in events:
                if event.seq != cached.seq + 1:
                    break
                cached.engine.apply(decode_report(event.payload))
                cached.seq = event.seq
            if cached.seq >= head_seq:
                return
            if attempt == 0:
                cached.engine, cached.seq = self._load(name, cached.spec, head_seq)
        raise RuntimeError(f"event log of {name!r} cannot reach seq {head_seq} "
                           f"(stuck at {cached.seq})")

    def recent(self, name: str, *, created_at: datetime | None = None) -> CachedEngine | None:
        """The cached entry if any (of the curriculum created at `created_at`, when
        given), marked as just used, without touching the store. It may be behind the
        log; without `created_at` it may belong to a curriculum of the same name that was
        since deleted and recreated elsewhere: writers compare `created_at` under the
        lock."""
        with self._guard:
            cached = self._entries.get(name)
            if cached is None or (created_at is not None and cached.created_at != created_at):
                return None
            self._entries.move_to_end(name)
            return cached

    def peek(self, name: str) -> CachedEngine | None:
        """The cached entry if any, without touching the store (may be behind the log)."""
        with self._guard:
            return self._entries.get(name)

    @staticmethod
    def invalidate(cached: CachedEngine) -> None:
        """The engine may have folded reports that did not commit: reload it on next use
        (caller holds the entry lock)."""
        cached.stale = True

    def forget(self, name: str, entry: CachedEngine | None = None) -> None:
        """Drop the cached engine of `name` (only if it is still `entry`, when given: a
        thread that found its entry outdated must not drop the fresh one another built)."""
        with self._guard:
            if entry is None or self._entries.get(name) is entry:
                dropped = self._entries.pop(name, None)
                if dropped is not None:
                    self.nbytes -= dropped.nbytes

    def engines(self) -> list[tuple[str, CachedEngine]]:
        with self._guard:
            return list(self._entries.items())
