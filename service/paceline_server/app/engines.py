"""In-process cache of curriculum engines, kept in step with the event log.

An engine cached at sequence number s is brought to the log's head by folding events
(s, head]; without a cached engine the newest snapshot is loaded and the tail replayed.
So any process (replica) serves any curriculum exactly, and the cache is only a speed-up:
dropping it never changes an answer. With Redis, other replicas' commits are announced
and folded in the background (`PacelineService._fold_announced`), off the request path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from paceline_server.app.codec import decode_report
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.engine import CurriculumEngine
from paceline_server.store.base import CurriculumHead, CurriculumRecord, Store


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


class EngineCache:
    def __init__(self, store: Store, capacity: int) -> None:
        self.store = store
        self.capacity = capacity
        self._entries: OrderedDict[str, CachedEngine] = OrderedDict()
        self._guard = threading.Lock()

    def entry(self, head: CurriculumHead | CurriculumRecord) -> CachedEngine:
        """The cache entry of a curriculum (built from its snapshot on first use, which is
        the only time the spec is read); callers hold `entry.lock` while they read or
        advance it."""
        with self._guard:
            cached = self._entries.get(head.name)
            if cached is not None and cached.created_at == head.created_at:
                self._entries.move_to_end(head.name)
                return cached
            record = (head if isinstance(head, CurriculumRecord)
                      else self.store.get_curriculum(head.name))
            if record.created_at != head.created_at:
                raise RuntimeError(f"curriculum {head.name!r} was recreated; retry")
            spec = CurriculumSpec.from_dict(record.spec)
            engine, seq = self._load(record.name, spec, record.head_seq)
            cached = CachedEngine(record.created_at, spec, engine, seq, threading.RLock())
            self._entries[record.name] = cached
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return cached

    def _load(self, name: str, spec: CurriculumSpec,
              head_seq: int) -> tuple[CurriculumEngine, int]:
        snapshot = self.store.latest_snapshot(name, at_most=head_seq)
        if snapshot is None:
            return CurriculumEngine(spec), 0
        return CurriculumEngine.from_bytes(spec, snapshot.state), snapshot.seq

    def catch_up(self, cached: CachedEngine, name: str, head_seq: int) -> None:
        """Fold committed events (cached.seq, head_seq] (caller holds the entry lock).

        When the events right after the cached position were pruned (by another
        replica), reload from the newest snapshot instead."""
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

    def recent(self, name: str) -> CachedEngine | None:
        """The cached entry if any, marked as just used, without touching the store. It
        may be behind the log, or belong to a curriculum of the same name that was since
        deleted and recreated elsewhere: writers compare `created_at` under the lock."""
        with self._guard:
            cached = self._entries.get(name)
            if cached is not None:
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
                self._entries.pop(name, None)

    def engines(self) -> list[tuple[str, CachedEngine]]:
        with self._guard:
            return list(self._entries.items())
