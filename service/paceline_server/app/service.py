"""The Paceline use cases, independent of any transport.

Write path (a report): lock the curriculum in the store, answer a retried idempotency
key with its original ack, bring the cached engine to the log head, validate and fold the
report (validation comes first, so bad input changes nothing), append the event, maybe
snapshot, commit. If anything fails after the fold the cached engine is dropped, so
memory never runs ahead of the log.

Read path (a batch): bring the engine to the head, propose, and store the batch under
(run, step) so a retried or repeated request returns the very same batch.

Replicas: the database alone keeps any number of processes correct; a `Coordinator`
(Redis) only speeds them up (announced heads folded in the background, cached acks,
write leases), see `app/coordination.py`. It is handed in at start-up (the Redis one
is an adapter, `adapters/redis_coordination.py`); without one, the database alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np

from paceline_server.app.codec import (
    decode_batch,
    encode_batch,
    encode_report,
    pruned_digest,
)
from paceline_server.app.coordination import (
    Coordinator,
    LocalCoordinator,
    curriculum_stamp,
)
from paceline_server.app.engines import (
    CachedEngine,
    EngineCache,
    check_distributions,
    check_state_budget,
)
from paceline_server.app.group_commit import (
    GroupCommitter,
    PendingReport,
    Recreated,
    check_size,
    with_counts,
)
from paceline_server.app.group_commit import NextBatch as NextBatch  # the transports' types
from paceline_server.app.group_commit import ReportAck as ReportAck
from paceline_server.app.history import HistoryService
from paceline_server.app.refill import (
    check_part,
    check_refill_size,
    propose_refill,
    served_union,
)
from paceline_server.app.reports import accepts_unserved, dropped_groups, parse_report
from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import (
    CurriculumExists,
    InvalidRequest,
    PacelineError,
    RefillOutOfOrder,
    StepAlreadyReported,
    Unavailable,
)
from paceline_server.domain.history import CurriculumHistory
from paceline_server.domain.inspection import CurriculumInspection
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.domain.validation import MAX_KEY as MAX_KEY  # the transports' limit
from paceline_server.domain.validation import check_document, check_identifier
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store.base import (
    BatchRecord,
    CurriculumHead,
    CurriculumRecord,
    RunKey,
    RunRecord,
    RunSummary,
    Store,
    payload_digest,
)
from paceline_server.strategies.registry import plugin_problems, preload_builtins

T = TypeVar("T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStatus:
    record: RunRecord
    stale: bool


@dataclass(frozen=True)
class CreateResult:
    record: CurriculumRecord
    created: bool


def utcnow() -> datetime:
    return datetime.now(UTC)


def effective_spec(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A spec (stored, or asked for) as this release runs it, the form two specs are
    compared in: a parameter added to a strategy since the spec was stored has its
    default, which is what the engine folds with, and a default that an explicit value
    also spells is written as that value (`primary_objective` null as the first
    objective's name, an allocation's parameters spelled out, `start: null` as steps //
    2: `CurriculumEngine.resolved_spec`). Compared as written, a trainer re-creating its
    curriculum with `exist_ok` after an upgrade, or naming a default the other trainer
    left implicit, was refused as "a different spec", and so was the merge of its own
    export. A spec this release cannot read is compared as stored."""
    try:
        return CurriculumEngine.resolved_spec(CurriculumSpec.from_dict(stored))
    except PacelineError:
        return dict(stored)


def spec_differences(a: Mapping[str, Any], b: Mapping[str, Any], where: str = ""
                     ) -> list[str]:
    """The dotted paths at which two specs differ (`sampler.params.temperature`)."""
    found: list[str] = []
    for key in sorted(set(a) | set(b), key=str):
        path = f"{where}{key}"
        left, right = a.get(key), b.get(key)
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            found += spec_differences(left, right, path + ".")
        elif left != right or (key in a) != (key in b):
            found.append(path)
    return found


class PacelineService:
    def __init__(self, store: Store, settings: Settings,
                 clock: Callable[[], datetime] = utcnow,
                 coordinator: Coordinator | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        preload_builtins()  # a curriculum's first engine then costs no strategy import
        for problem in plugin_problems():  # said at start, not at a curriculum's create
            _log.warning("%s", problem)
        self.engines = EngineCache(store, settings.engine_cache_size,
                                   settings.engine_cache_bytes)
        self.histories = HistoryService(  # GET /history (app/history.py)
            store, max_bytes=settings.history_cache_bytes)
        if coordinator is None and settings.redis_url:
            _log.warning("PACELINE_REDIS_URL is set but no coordinator was handed to this "
                         "service (see adapters/redis_coordination.py): coordinating "
                         "through the database alone")
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self.coordinator.start(self._fold_announced)
        self.commits = GroupCommitter(store, self.engines, self.coordinator, settings)
        self.commits.on_fold = self.histories.record  # history checkpoints
        # Runs are only ever removed with their curriculum, so a run once seen exists for
        # as long as that curriculum (told apart from a recreated one by created_at).
        self._known_runs: set[tuple[str, datetime, str]] = set()
        self._known_guard = threading.Lock()
        #: Worker threads of `report_async`: group commits and the I/O the loop avoids.
        self._executor = ThreadPoolExecutor(max_workers=32,
                                            thread_name_prefix="paceline-report")

    def close(self) -> None:
        """Finish the reports in flight and stop the coordinator's threads (the store is
        closed by its owner)."""
        self._executor.shutdown(wait=True)
        self.coordinator.close()

    def _fold_announced(self, name: str, stamp: int, seq: int) -> int:
        """Another writer committed `name` up to `seq`: fold the tail into the cached
        engine now, on the coordinator's thread, so the next request finds it current.
        Only a speed-up (requests still catch up to the head they read), so it skips
        curricula not cached here and gives way when requests hold the engine."""
        cached = self.engines.peek(name)
        if (cached is None or cached.seq >= seq
                or curriculum_stamp(cached.created_at) != stamp):
            return 0
        if not cached.lock.acquire(timeout=0.05):
            return 0
        try:
            before = cached.seq
            self.engines.catch_up(cached, name, seq)
            return max(cached.seq - before, 0)
        except Exception:
            self.engines.invalidate(cached)  # reloaded from the log on next use
            raise
        finally:
            cached.lock.release()

    def _run_known(self, record: CurriculumHead, run_id: str) -> bool:
        return (record.name, record.created_at, run_id) in self._known_runs

    def _check_run(self, record: CurriculumHead, run_id: str) -> None:
        key = (record.name, record.created_at, run_id)
        if key in self._known_runs:
            return
        self.store.get_run(record.name, run_id)
        with self._known_guard:
            if len(self._known_runs) > 100_000:
                self._known_runs.clear()
            self._known_runs.add(key)

    # ---------------------------------------------------------------- curricula
    def create_curriculum(self, spec_data: Mapping[str, Any], exist_ok: bool = False,
                          ) -> CreateResult:
        """Validate the spec by building its strategies, store it in canonical form.

        With `exist_ok` an equal spec returns the stored curriculum; a different spec of
        the same name is always a conflict. No state is built here (the first batch or
        report builds the engine): building one to read its canonical spec cost a
        state-sized allocation on every call, `exist_ok` hits included, i.e. at every
        trainer rank's start (+0.5 GB for a 10⁷-sample `prioritized` curriculum)."""
        parsed = CurriculumSpec.from_dict(spec_data)
        self.admit(parsed)
        spec = CurriculumEngine.canonical_spec(parsed)
        canonical = spec.to_dict()
        try:
            return CreateResult(self.store.create_curriculum(spec.name, canonical), True)
        except CurriculumExists:
            existing = self.store.get_curriculum(spec.name)
            differing = spec_differences(effective_spec(existing.spec),
                                         effective_spec(canonical))
            if exist_ok and not differing:
                return CreateResult(existing, False)
            raise CurriculumExists(
                f"curriculum {spec.name!r} exists"
                + (f" with a different spec ({', '.join(differing)})" if differing else ""),
                {"name": spec.name, "same_spec": not differing,
                 **({"differing": differing} if differing else {})},
            ) from None

    def admit(self, spec: CurriculumSpec) -> None:
        """Refuse a spec over this service's limits (created or imported), judged from
        the spec before anything is allocated: an oversized one is refused in
        microseconds instead of taking the process's memory and time."""
        check_distributions(spec, self.settings.max_distributions)
        check_state_budget(spec, self.settings.max_state_bytes)

    def get_curriculum(self, name: str) -> CurriculumRecord:
        return self.store.get_curriculum(name)

    def list_curricula(self, limit: int = 100, offset: int = 0,
                       after: str | None = None) -> list[CurriculumRecord]:
        """`limit` curricula by name from `offset`, after the name `after` if given."""
        return self.store.list_curricula(limit=limit, offset=offset, after=after)

    def delete_curriculum(self, name: str) -> None:
        self.store.delete_curriculum(name)
        self.engines.forget(name)
        self.histories.forget(name)

    def drop_deleted(self, names: Iterable[str] = ()) -> set[str]:
        """Of `names` and the cached curricula, those deleted since this process used
        them, or deleted and created again (its cached engine is of the earlier one);
        their cached engines (and histories) are dropped. A delete served by another
        process (a replica, a worker) is not announced to this one, which otherwise kept
        the engine, and reported its state as current, until evicted. One store read."""
        cached = self.engines.engines()  # before the read: each existed when cached
        wanted = set(names)
        heads = self.store.heads(wanted.union(name for name, _ in cached))
        gone = {name for name in wanted if name not in heads}
        for name, entry in cached:
            head = heads.get(name)
            if head is None or head.created_at != entry.created_at:
                self.engines.forget(name, entry)
                gone.add(name)
        for name in gone:
            if name not in heads:
                self.histories.forget(name)
        return gone

    # ---------------------------------------------------------------- runs
    def attach_run(self, name: str, metadata: Mapping[str, Any] | None = None,
                   run_id: str | None = None) -> RunRecord:
        if run_id is not None:
            check_identifier(run_id, "run_id", InvalidRequest)
        metadata = dict(metadata or {})
        check_document(metadata, "metadata", InvalidRequest)
        self.store.get_curriculum(name)
        return self.store.add_run(name, run_id or uuid.uuid4().hex, metadata,
                                  self.clock())

    def heartbeat(self, name: str, run_id: str) -> RunStatus:
        return self._status(self.store.heartbeat(name, run_id, self.clock()))

    def get_run(self, name: str, run_id: str) -> RunStatus:
        return self._status(self.store.get_run(name, run_id))

    def list_runs(self, name: str, limit: int | None = None, offset: int = 0,
                  after: RunKey | None = None, *,
                  created_at: datetime | None = None) -> list[RunStatus]:
        """`limit` runs (None: all) from `offset`, oldest first, after the key `after`
        (`RunRecord.key`) if given; with `created_at`, of the curriculum created then
        (Conflict if `name` is now another one: `Store.list_runs`)."""
        return [self._status(r) for r in self.store.list_runs(name, limit, offset, after,
                                                              created_at=created_at)]

    def run_summary(self, name: str) -> RunSummary:
        """The runs of `name` counted in the database (the listing's columns: how many,
        how many stale, the last heartbeat) without reading them."""
        stale_at = self.clock() - timedelta(seconds=self.settings.run_stale_after_s)
        return self.store.run_summary(name, stale_at)

    def _status(self, run: RunRecord) -> RunStatus:
        """Stale once no heartbeat came for `run_stale_after_s` (that long included)."""
        limit = timedelta(seconds=self.settings.run_stale_after_s)
        return RunStatus(run, stale=self.clock() - run.last_heartbeat >= limit)

    # ---------------------------------------------------------------- reports
    def report(self, name: str, body: Mapping[str, Any],
               idempotency_key: str | None = None,
               next_batch: NextBatch | None = None) -> ReportAck:
        """Validate, then append and fold the report; the ack means it is committed.

        With `next_batch` the ack also carries the batch of (the report's run,
        `next_batch.step`): one call per training step instead of two. It is proposed
        right after this report is folded and stored in the same transaction, so it is
        exactly the batch a separate `next_batch` call would then return (and returns
        later); a retried report returns the batch stored by its first attempt.

        Concurrent reports to one curriculum are committed together (group commit,
        `app/group_commit.py`): each
        request queues its validated report on the cached engine, and whichever request
        holds the engine lock next commits everything queued in one transaction, in
        queue order. Requests that find their report committed by another return its
        ack. So eight trainers reporting at once cost one lock and one fsync per group
        instead of one each, with the same per-report results as one by one. (An event
        loop calls `report_async`, which queues on the same groups without a thread per
        waiting request.)

        With a coordinator, a retry whose ack is cached returns before any lock, and the
        request leading a group waits for the cross-replica write lease (not holding the
        engine) before it commits; the ack is cached and the new head announced after.

        A cached engine is used without reading the head first (the commit catches it up
        under the lock); should the curriculum have been recreated meanwhile, the commit
        notices and the report is redone on a fresh engine.
        """
        self._check_key(idempotency_key)
        cached = self.engines.recent(name)
        try:
            return self._report(name, body, idempotency_key, next_batch, cached)
        except Recreated:
            self.engines.forget(name, cached)
            return self._report(name, body, idempotency_key, next_batch, None)

    async def report_async(self, name: str, body: Mapping[str, Any],
                           idempotency_key: str | None = None,
                           next_batch: NextBatch | None = None) -> ReportAck:
        """`report` for an event loop, with the same results and guarantees.

        The loop's thread validates and queues the report (CPU work, which holds the GIL
        wherever it runs) and the group is committed in a worker thread: one thread
        hand-off per group commit instead of one per request, and no thread parked per
        waiting request. Whenever that would make the loop wait on I/O — the curriculum
        or the run not yet known to this process, an ack cache to ask, a curriculum
        recreated meanwhile, events to prune — it runs `report` in a worker thread.
        """
        self._check_key(idempotency_key)
        loop = asyncio.get_running_loop()
        cached = self.engines.recent(name)
        if cached is None or self.coordinator.caches_acks:
            return await self._in_thread(self.report, name, body, idempotency_key,
                                         next_batch)
        item = self._prepare(cached, body, idempotency_key, next_batch, known_runs_only=True)
        if item is None:  # the run is not known here yet: look it up off the loop
            return await self._in_thread(self.report, name, body, idempotency_key,
                                         next_batch)
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def notify() -> None:
            # RuntimeError: the loop has closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished)

        item.notify = notify
        with cached.pending_guard:
            cached.pending.append(item)
            drain = not cached.draining
            cached.draining = True
        if drain:
            try:
                self._in_thread(self.commits.drain, name, cached)
            except Unavailable:  # closing: take the report back unless one was taken
                with cached.pending_guard:
                    cached.draining = False
                    queued = any(i is item for i in cached.pending)
                    if queued:
                        cached.pending.remove(item)
                if queued:
                    raise
        await done
        if isinstance(item.error, Recreated):
            self.engines.forget(name, cached)
            return await self._in_thread(self.report, name, body, idempotency_key,
                                         next_batch)
        ack = self._acked(item)
        if self._prunes(ack):
            await self._in_thread(self._prune, name, ack.seq)
        return ack

    def _in_thread(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`function(*args)` in a worker thread of the running loop."""
        try:
            return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except RuntimeError as exc:  # the executor was shut down by `close`
            raise Unavailable("the service is shutting down", {}) from exc

    def _check_key(self, idempotency_key: str | None) -> None:
        if idempotency_key is not None:
            check_identifier(idempotency_key, "idempotency_key", InvalidRequest,
                             max_length=MAX_KEY)

    def _prepare(self, cached: CachedEngine, body: Mapping[str, Any],
                 idempotency_key: str | None, next_batch: NextBatch | None,
                 known_runs_only: bool = False) -> PendingReport | None:
        """Parse and validate a report against `cached`'s spec (nothing is applied yet);
        None when `known_runs_only` and its run is not known to this process."""
        report = parse_report(body, cached.spec)
        if next_batch is not None:  # refused before anything is applied
            cached.engine.check_batch_request(report.run_id, next_batch.step, next_batch.size)
        record = CurriculumHead(name=cached.spec.name, created_at=cached.created_at,
                                head_seq=cached.seq)
        if known_runs_only:
            if not self._run_known(record, report.run_id):
                return None
        else:
            self._check_run(record, report.run_id)
        dropped = dropped_groups(body, report)
        trained = report.num_rollouts - int(np.count_nonzero(np.isin(report.group_of,
                                                                     dropped)))
        return PendingReport(report, encode_report(report), idempotency_key, next_batch,
                              accept_unserved=accepts_unserved(body),
                              counts=(report.num_rollouts, trained, int(dropped.size)),
                              dynamic=isinstance(body, Mapping) and "dropped" in body)

    def _acked(self, item: PendingReport) -> ReportAck:
        if item.error is not None:
            raise item.error
        assert item.ack is not None
        return with_counts(item.ack, item)

    def _prunes(self, ack: ReportAck) -> bool:
        return (not ack.replayed and self.settings.prune_events
                and ack.seq % self.settings.snapshot_every == 0)

    def _prune(self, name: str, seq: int) -> None:
        """Prune the log up to the snapshot at `seq`, after the report committed: best
        effort, since the report is durable whatever happens here and its client must
        hear so (a failure answered a committed report with an error: a 404 when the
        curriculum was deleted meanwhile, a 503 on a lock timeout). The next snapshot's
        pruning takes what this one left."""
        try:
            self.store.prune_events(name, seq, pruned_digest)
        except Exception:
            _log.warning("curriculum %r: pruning the event log at seq %d failed; the next "
                         "snapshot's pruning takes it", name, seq, exc_info=True)

    def _report(self, name: str, body: Mapping[str, Any], idempotency_key: str | None,
                next_batch: NextBatch | None, cached: CachedEngine | None) -> ReportAck:
        if cached is None:
            cached = self.engines.entry(self.store.head(name))
        item = self._prepare(cached, body, idempotency_key, next_batch)
        assert item is not None
        stamp = curriculum_stamp(cached.created_at)
        if item.key is not None and self.coordinator.caches_acks:
            item.digest = payload_digest(item.payload)
            hit = self.coordinator.cached_ack(name, stamp, item.key)
            if hit is not None and hit[1] == item.digest:  # else the log decides
                # The stamp is the cached engine's: confirm it is still the curriculum's
                # (another replica may have deleted and recreated it), or the old
                # curriculum's ack would answer for a report the new one never got.
                if self.store.head(name).created_at != cached.created_at:
                    raise Recreated(name)
                batch = None if next_batch is None else self.next_batch(
                    name, item.report.run_id, next_batch.step, next_batch.size)
                return with_counts(ReportAck(hit[0], replayed=True, batch=batch), item)
        with cached.pending_guard:
            cached.pending.append(item)
        with cached.commit_lock:
            if not item.done:
                try:
                    self.commits.commit_pending(name, cached)
                except BaseException:  # before the group was taken (e.g. no write lease):
                    with cached.pending_guard:  # take the report back, unless committed
                        queued = any(i is item for i in cached.pending)
                        if queued:
                            cached.pending.remove(item)
                    if queued or not item.done:
                        raise
        ack = self._acked(item)
        if self._prunes(ack):
            self._prune(name, ack.seq)
        return ack

    # ---------------------------------------------------------------- batches
    def next_batch(self, name: str, run_id: str, step: int,
                   size: int | None = None) -> Batch:
        """The batch of (run, step): computed once at the current head, then stored.

        Stored without waiting for an fsync (see `Store.put_batch`): a batch only has to
        outlive the process, and the next report's commit makes it durable anyway."""
        record, stored = self.store.lookup_batch(name, run_id, step)
        self._check_run(record, run_id)
        if stored is None:
            cached = self.engines.entry(record)
            with cached.lock:
                self.engines.catch_up(cached, name, record.head_seq)
                batch = cached.engine.next_batch(run_id, step, size)
                seq = cached.seq
            payload = encode_batch(batch)
            stored = self.store.put_batch(  # refused if `name` was recreated meanwhile
                name, BatchRecord(run_id=run_id, step=step, seq=seq, payload=payload),
                durable=False, created_at=record.created_at)
            if stored.payload != payload:
                batch = decode_batch(stored.payload)  # another request stored it first
            cached.remember_served(run_id, step, batch.indices)
        else:
            batch = decode_batch(stored.payload)
            # An engine cached for a predecessor of the same name (deleted and created
            # again by another replica) goes: `names` would name this batch from its spec.
            previous = self.engines.peek(name)
            if previous is not None and previous.created_at != record.created_at:
                self.engines.forget(name, previous)
        check_size(batch, size)
        return batch

    def refill(self, name: str, run_id: str, step: int, part: int,
               size: int | None = None) -> Batch:
        """Refill part `part` (1, 2, ...) of (run, step): `size` more prompts (default:
        the curriculum's batch size) that no earlier part of the step served, chosen by
        the curriculum's sampler (dynamic sampling; see `app/refill.py`).

        Deterministic and idempotent per (run, step, part): asking again returns the
        stored part (another size is a conflict; no size, the part as served, as for a
        step's batch). Refused, with nothing stored, for a
        step not served yet or a part that skips one (REFILL_OUT_OF_ORDER), a step
        already reported (STEP_ALREADY_REPORTED) and more prompts than the step has
        left unserved (REFILL_TOO_LARGE). Taken under the curriculum's write lock, so a
        report of the step and its refill cannot interleave."""
        part = check_part(part)
        head = self.store.head(name)
        self._check_run(head, run_id)
        cached = self.engines.entry(head)
        with cached.lock, self.store.writer(name) as writer:
            if writer.created_at != cached.created_at:
                raise Unavailable(f"curriculum {name!r} was recreated meanwhile; retry",
                                  {"curriculum": name})
            asked = size
            size = check_refill_size(cached.engine, run_id, step, size)
            parts = writer.get_parts(run_id, step)
            for record in parts:
                if record.part == part:  # served before: the same part again
                    batch = decode_batch(record.payload)
                    check_size(batch, None if asked is None else size)
                    return batch
            first = writer.get_batch(run_id, step)
            if first is None or part != len(parts) + 1:
                raise RefillOutOfOrder(
                    f"refill part {part} of step {step} of run {run_id!r} needs parts "
                    f"0..{part - 1} first; {'none' if first is None else len(parts) + 1}"
                    " served", {"step": step, "part": part,
                                "served_parts": 0 if first is None else len(parts) + 1})
            if writer.find_report(run_id, step) is not None:
                raise StepAlreadyReported(
                    f"step {step} of run {run_id!r} was already reported: a refill "
                    "must come before the step's report", {"step": step})
            served = served_union([decode_batch(first.payload),
                                   *(decode_batch(p.payload) for p in parts)])
            self.engines.catch_up(cached, name, writer.head_seq)
            batch = propose_refill(cached.engine, run_id, step, part, size, served)
            payload = encode_batch(batch)
            stored = writer.put_part(BatchRecord(run_id=run_id, step=step,
                                                 seq=cached.seq, payload=payload,
                                                 part=part))
        return batch if stored.payload == payload else decode_batch(stored.payload)

    # ---------------------------------------------------------------- inspection
    def inspect(self, name: str) -> tuple[CurriculumRecord, CurriculumInspection]:
        record = self.store.get_curriculum(name)
        cached = self.engines.entry(record)
        with cached.lock:
            self.engines.catch_up(cached, name, record.head_seq)
            return record, cached.engine.inspect()

    def history(self, name: str, every: int | None = None, since: int | None = None,
                wait_s: float | None = None) -> CurriculumHistory:
        """Per-report series of `name` (see app/history.py for what it costs)."""
        return self.histories.history(name, every, since, wait_s)

    def state(self, name: str) -> CurriculumInspection:
        """The inspection without reading the spec (cheap for polling and metrics)."""
        head = self.store.head(name)
        cached = self.engines.entry(head)
        with cached.lock:
            self.engines.catch_up(cached, name, head.head_seq)
            return cached.engine.inspect()

    def names(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(objective names, distribution names): fixed for a curriculum's lifetime, so a
        cached engine answers without a database round trip."""
        cached = self.engines.peek(name) or self.engine(name)
        return cached.spec.objective_names, cached.spec.layout.names

    def engine(self, name: str) -> CachedEngine:
        """The up-to-date cached engine (callers hold its lock while reading)."""
        record = self.store.head(name)
        cached = self.engines.entry(record)
        with cached.lock:
            self.engines.catch_up(cached, name, record.head_seq)
        return cached


