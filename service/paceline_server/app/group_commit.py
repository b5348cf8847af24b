"""Group commit: the reports queued on one cached engine committed in one transaction.

Concurrent reports to a curriculum queue their validated item on its cached engine; the
request (or `report_async` worker) that takes the engine's commit lock next commits the
whole queue at once, in queue order, so N trainers reporting together cost one lock and
one fsync instead of N. This module owns that queue's protocol: who commits, how a failed
report is isolated from its neighbours, what an ack carries, and the checks that need the
open transaction (idempotency keys, a step folded once, served indices). Validation
before queueing stays with the use cases (`app/service.py`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from paceline_server.app.codec import decode_batch, encode_batch, holds
from paceline_server.app.coordination import Coordinator, curriculum_stamp
from paceline_server.app.engines import CachedEngine, EngineCache
from paceline_server.app.refill import served_union
from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import (
    IdempotencyConflict,
    IndicesNotServed,
    InvalidRequest,
    NotServed,
    PacelineError,
    ReportConflict,
    SchemaOutdated,
    Unavailable,
)
from paceline_server.domain.history import ProgressPoint, pack_point
from paceline_server.domain.report import Report
from paceline_server.settings import Settings
from paceline_server.store.base import (
    BatchRecord,
    CurriculumWriter,
    EventRecord,
    Store,
)

_log = logging.getLogger(__name__)


#: A hook told of each report folded and appended: (writer, cached engine, seq, step,
#: snapshot_every, the report's history row); `HistoryService.record`.
OnFold = Callable[[CurriculumWriter, CachedEngine, int, int, int, ProgressPoint], None]


@dataclass(frozen=True)
class ReportAck:
    seq: int
    replayed: bool  # True when this answers a retry of an already applied report
    batch: Batch | None = None  # the next batch, when the report asked for it
    #: Every rollout of the report was generated and is folded; those of groups the
    #: trainer's filter dropped (the report's `dropped`) were not trained on.
    rollouts_generated: int = 0
    rollouts_trained: int = 0
    groups_dropped: int = 0
    dynamic: bool = False  # the report said which groups it dropped (`dropped`, maybe [])


@dataclass(frozen=True)
class NextBatch:
    """A report's request for the batch of (its run, `step`), served with the ack."""

    step: int
    size: int | None = None

    @classmethod
    def asked(cls, step: int | None, size: int | None) -> NextBatch | None:
        """From a transport's optional step and size (a size alone is refused)."""
        if step is None:
            if size is not None:
                raise InvalidRequest("next_size needs next_step", {"field": "next_size"})
            return None
        return cls(step, size)


class GroupCommitter:
    """Commits the reports queued on cached engines (`CachedEngine.pending`), one group
    per transaction; with a coordinator, under the cross-replica write lease."""

    def __init__(self, store: Store, engines: EngineCache, coordinator: Coordinator,
                 settings: Settings) -> None:
        self.store = store
        self.engines = engines
        self.coordinator = coordinator
        self.settings = settings
        #: Called after each report is folded and appended (writer, cached, seq, step,
        #: snapshot_every, the row appended with it): the history's rows
        #: (`HistoryService.record`). When set, each report's `progress()` is computed
        #: between the fold and the append and stored in the event's own row.
        self.on_fold: OnFold | None = None

    def drain(self, name: str, cached: CachedEngine) -> None:
        """Commit what `report_async` queued on `cached`, group by group (worker thread).
        Reports queued by `report` may ride along, and `report` threads may commit queued
        async reports: every item is answered by whoever commits it."""
        while True:
            with cached.pending_guard:
                if not cached.pending:
                    cached.draining = False
                    return
            try:
                with cached.commit_lock:  # a `report` thread may have taken them all
                    self.commit_pending(name, cached)
            except BaseException as exc:  # e.g. no write lease: fail what is queued
                with cached.pending_guard:
                    group, cached.pending = cached.pending, []
                _finish(group, error=exc)

    def commit_pending(self, name: str, cached: CachedEngine) -> None:
        """Commit everything queued on `cached` as one group (caller holds its
        commit_lock); with a coordinator, under the cross-replica write lease."""
        with self.coordinator.exclusive(name) as notice:
            with cached.lock:
                with cached.pending_guard:
                    group, cached.pending = cached.pending, []
                if not group:
                    return
                self._commit_group(name, cached, group)
                head = cached.seq
            if any(i.ack is not None for i in group):  # the transaction committed
                notice.record(curriculum_stamp(cached.created_at), head, [
                    (i.key, i.ack.seq, i.digest) for i in group
                    if i.key is not None and i.ack is not None and i.digest])

    def _commit_group(self, name: str, cached: CachedEngine,
                      group: list[PendingReport]) -> None:
        """Fold and append `group` in one transaction (caller holds the engine lock).

        A retried key is answered from the log (or from earlier in the group) without a
        fold. A report that fails inside the transaction is answered with its own error
        and the others are committed without it, in a new transaction (one bad report
        never fails its neighbours); a failure that belongs to no single report (the
        database, the lease, a recreated curriculum, the commit itself) fails the whole
        group and none is acknowledged. Whenever a transaction fails, the engine, which
        may have folded some of it, is reloaded."""
        remaining = group
        while remaining:
            culprit = self._commit_once(name, cached, remaining)
            if culprit is None:
                return
            remaining = [item for item in remaining if item is not culprit]

    def _commit_once(self, name: str, cached: CachedEngine,
                     group: list[PendingReport]) -> PendingReport | None:
        """One transaction for `group`: every report is then done, except the one
        returned, which failed alone and which the caller retries the others without."""
        current: PendingReport | None = None
        for item in group:  # a retry starts afresh
            item.ack, item.error = None, None
        try:
            with self.store.writer(name) as writer:
                if writer.created_at != cached.created_at:
                    raise Recreated(name)
                self.engines.catch_up(cached, name, writer.head_seq)
                for item in group:
                    current = item
                    try:
                        item.ack = self._append(writer, cached, item)
                    except (IdempotencyConflict, ReportConflict,
                            NotServed) as exc:  # refused before any write
                        item.error = exc
                current = None  # from here on a failure is the commit's, not a report's
                seq = writer.head_seq
        except BaseException as exc:
            self.engines.invalidate(cached)
            if current is None or len(group) == 1 or not _report_failure(exc):
                _finish(group, error=exc)
                return None
            _log.warning("a report failed inside a group commit of %r; committing the "
                         "other %d without it: %r", name, len(group) - 1, exc)
            _finish([current], error=exc)
            return current
        cached.seq = seq
        for item in group:  # committed: a report of the batch's step checks against it
            if item.ack is not None and item.ack.batch is not None:
                batch = item.ack.batch
                cached.remember_served(batch.run_id, batch.step, batch.indices)
        _finish(group)
        return None

    def _append(self, writer: CurriculumWriter, cached: CachedEngine,
                item: PendingReport) -> ReportAck:
        served = None
        if item.next is not None:  # a conflicting stored batch refuses the whole report
            record = writer.get_batch(item.report.run_id, item.next.step)
            if record is not None:
                served = decode_batch(record.payload)
                check_size(served, item.next.size)
        if item.key is not None:
            previous = writer.find_by_key(item.key)
            if previous is not None:
                if not holds(previous, item.payload, item.report):
                    raise IdempotencyConflict(
                        "idempotency key was used for a different report",
                        {"idempotency_key": item.key, "seq": previous.seq})
                return ReportAck(previous.seq, replayed=True,
                                 batch=self._batch_in(writer, cached, item, served))
        earlier = _reported_before(writer, item)
        if earlier is not None:  # the same report under another key: answered, not folded
            return ReportAck(earlier.seq, replayed=True,
                             batch=self._batch_in(writer, cached, item, served))
        if not item.accept_unserved:
            _check_served(writer, item.report,
                          cached.served_batch(item.report.run_id, item.report.step))
        cached.engine.apply(item.report, validated=True)  # parsed against cached.spec
        point = None if self.on_fold is None else cached.engine.progress()
        seq = writer.append("report", item.report.run_id, item.report.step, item.key,
                            item.payload, checked=True,
                            progress=None if point is None else pack_point(point))
        if self.on_fold is not None and point is not None:
            self.on_fold(writer, cached, seq, item.report.step, self.settings.snapshot_every,
                         point)
        if seq % self.settings.snapshot_every == 0:
            self._snapshot(writer, cached, seq)
        return ReportAck(seq, replayed=False,
                         batch=self._batch_in(writer, cached, item, served))

    @staticmethod
    def _snapshot(writer: CurriculumWriter, cached: CachedEngine, seq: int) -> None:
        """A snapshot only shortens loading. It is streamed: the store takes the state's
        arrays piece by piece into bounded chunks, so writing it needs one chunk beside
        the state, not a second copy. One that still cannot be written for want of
        memory is skipped (the store rolls the partial snapshot back), never failing the
        report it is due at; the next is due `snapshot_every` events later, and the log
        alone keeps the state exact."""
        try:
            writer.put_snapshot(seq, cached.engine.snapshot_pieces())
        except MemoryError:
            _log.warning("snapshot of %r at seq %d skipped: out of memory",
                         cached.spec.name, seq)
        except PacelineError:
            raise  # the store's: the commit fails
        except Exception as exc:  # a state the codec cannot write (a plug-in's field)
            spec = cached.spec
            _log.error("snapshot of %r at seq %d skipped: its state cannot be written "
                       "(sampler %r, weighting %r: %s: %s); reports go on, the log keeps "
                       "the state exact, and loading it replays the log", spec.name, seq,
                       spec.sampler.kind, spec.weighting.kind, type(exc).__name__, exc)

    @staticmethod
    def _batch_in(writer: CurriculumWriter, cached: CachedEngine, item: PendingReport,
                  served: Batch | None) -> Batch | None:
        """The batch the report asked for: the one served before, or proposed now (the
        engine has folded through `writer.head_seq`) and stored with the report."""
        if item.next is None:
            return None
        if served is not None:
            return served
        run_id, step = item.report.run_id, item.next.step
        batch = cached.engine.next_batch(run_id, step, item.next.size)
        payload = encode_batch(batch)
        stored = writer.put_batch(BatchRecord(run_id=run_id, step=step,
                                              seq=writer.head_seq, payload=payload))
        return batch if stored.payload == payload else decode_batch(stored.payload)


class Recreated(Exception):
    """The cached engine belongs to an earlier curriculum of this name (found under the
    write lock, so nothing was written): the report is redone on a fresh engine."""


@dataclass(eq=False)
class PendingReport:
    """A validated report waiting in a curriculum's group-commit queue."""

    report: Report
    payload: bytes
    key: str | None
    next: NextBatch | None = None
    digest: bytes = b""  # payload_digest(payload), computed only for the ack cache
    done: bool = False
    ack: ReportAck | None = None
    error: BaseException | None = None
    notify: Callable[[], object] | None = None  # called once done (`report_async`)
    accept_unserved: bool = False  # the report opted out of the served-step check
    counts: tuple[int, int, int] = (0, 0, 0)  # rollouts generated, trained; groups dropped
    dynamic: bool = False  # the report named its dropped groups


def _report_failure(exc: BaseException) -> bool:
    """Whether `exc`, raised while one report was appended, is that report's own: not an
    unavailable or outdated database, a recreated curriculum or an interrupt, which any
    report would have met."""
    return isinstance(exc, Exception) and not isinstance(
        exc, Unavailable | SchemaOutdated | Recreated)


def served_indices(writer: CurriculumWriter, run_id: str, step: int,
                   covering: np.ndarray | None = None) -> np.ndarray | None:
    """Every sample index served to (run, step), or None when the step was never served.

    The one place that knows how a step's served batch is stored: a step served in
    several parts (dynamic sampling) serves the union of its parts. With `covering`, the
    refill parts are read only when the step's batch does not contain all of those
    indices (so a report of a step never refilled costs no extra query)."""
    record = writer.get_batch(run_id, step)
    if record is None:
        return None
    first = decode_batch(record.payload)
    if covering is not None and _members(covering, first.indices).all():
        return first.indices
    parts = [decode_batch(p.payload) for p in writer.get_parts(run_id, step)]
    if not parts:
        return first.indices
    return served_union([first, *parts])


def _members(values: np.ndarray, pool: np.ndarray, presorted: bool = False) -> np.ndarray:
    """Which of `values` are in `pool`, by binary search in the sorted pool (`presorted`:
    it is sorted already): tens of microseconds for a 1024-prompt step (np.isin builds a
    table over the index range or uniquifies both sides, milliseconds on the report
    path)."""
    ordered = pool if presorted else np.sort(pool)
    if ordered.size == 0:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    return ordered[at] == values


def _check_served(writer: CurriculumWriter, report: Report,
                  known: np.ndarray | None = None) -> None:
    """Refuse a report for a step Paceline never served, or naming indices outside what
    it served: such rows were matched to the wrong step or addressed by other indices
    than Paceline's, and folding them would corrupt the curriculum silently. `known`:
    the step's batch as this process stored it (sorted, `CachedEngine.served_batch`); a
    report within it needs no read of the store."""
    if known is not None and _members(report.indices, known, presorted=True).all():
        return
    served = served_indices(writer, report.run_id, report.step, covering=report.indices)
    if served is None:
        raise NotServed(
            f"step {report.step} of run {report.run_id!r} was never served a batch: report "
            "the steps Paceline served, or send unserved: \"accept\" for a trainer that "
            "samples its own prompts", {"run_id": report.run_id, "step": report.step})
    foreign = np.unique(report.indices[~_members(report.indices, served)])
    if foreign.size:
        raise IndicesNotServed(
            f"sample indices {foreign[:8].tolist()}{'...' if foreign.size > 8 else ''} "
            f"were not served to step {report.step} of run {report.run_id!r}",
            {"run_id": report.run_id, "step": report.step,
             "not_served": foreign[:64].tolist(), "count": int(foreign.size)})


def _reported_before(writer: CurriculumWriter, item: PendingReport) -> EventRecord | None:
    """The report already folded for the item's (run, step): the same content (under any
    idempotency key) is answered with it; other content is a conflict, never a second
    fold (a resumed trainer replaying a step must not count it twice)."""
    report = item.report
    earlier = writer.find_report(report.run_id, report.step)
    if earlier is None:
        return None
    if not holds(earlier, item.payload, report):
        raise ReportConflict(
            f"step {report.step} of run {report.run_id!r} was already reported (seq "
            f"{earlier.seq}) with different content: a step is folded once",
            {"run_id": report.run_id, "step": report.step, "seq": earlier.seq})
    return earlier


def with_counts(ack: ReportAck, item: PendingReport) -> ReportAck:
    generated, trained, dropped = item.counts
    return dataclasses.replace(ack, rollouts_generated=generated, rollouts_trained=trained,
                               groups_dropped=dropped, dynamic=item.dynamic)


def _finish(group: list[PendingReport], error: BaseException | None = None) -> None:
    """Mark a group's reports done (failed with `error`, if given) and tell waiters."""
    for item in group:
        if error is not None:
            item.ack, item.error = None, error
        item.done = True
        if item.notify is not None:
            item.notify()


def check_size(batch: Batch, size: int | None) -> None:
    """A step is served once: asking again with another size is a conflict."""
    if size is not None and size != batch.indices.size:
        raise IdempotencyConflict(
            f"step {batch.step} of run {batch.run_id!r} was already served with size "
            f"{batch.indices.size}", {"step": batch.step, "size": int(batch.indices.size)})

