"""A curriculum's history, rebuilt from what the store keeps (events and snapshots).

Nothing extra is written on the report path: the history is the fold of the event log
observed after every report. The first request for a curriculum replays its log through a
fresh engine (from seq 0; from the oldest usable snapshot when events were pruned) and
records one `ProgressPoint` per report; later requests fold only the reports committed
since, so a dashboard polling every few seconds pays for the new reports alone.

Cost (see docs/benchmarks.md, "History"):
- first request: one engine fold per stored report (the same work as `replay`), plus
  O(D + k) per report for the row; kept in memory: 8·(5·D + k + 4) bytes per report
  (about 0.3 MB per 10 000 reports with 4 distributions and 2 objectives) and one engine.
  A long replay runs in a background thread: a request given `wait_s` answers after at
  most that long with the rows replayed so far (`complete` false) and the replay goes
  on, so a dashboard shows a long curriculum filling in instead of waiting for it.
- later requests: the new reports' folds (inline when fewer than `INLINE_FOLDS`), then
  O(rows returned) to select and encode.
- `every` downsamples to the rows at multiples of `every` plus the head; left out, it is
  chosen so that at most `MAX_POINTS` rows come back, so a 100 000-report curriculum
  answers with 1 000 rows, not 100 000.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from paceline_server.app.codec import decode_report
from paceline_server.domain.errors import HistoryOutOfRange, InvalidDownsampling
from paceline_server.domain.history import (
    DISTRIBUTION_SERIES,
    CurriculumHistory,
    ProgressPoint,
)
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.domain.validation import MAX_INT
from paceline_server.engine import CurriculumEngine
from paceline_server.store.base import EventRecord, Store

#: rows a history returns when the request names no `every`
MAX_POINTS = 1000
#: curricula whose replayed history (and engine) are kept in memory
CACHE_SIZE = 4
#: a request folds at most this many new reports itself; more go to a background replay
INLINE_FOLDS = 50
#: events a background replay folds per turn of the trace's lock
CHUNK = 25
#: how long a transport's request waits for a long replay before answering with part
HISTORY_WAIT_S = 0.5
_FLAGS = ("stalled", "saturated", "hopeless")


@dataclass
class _Columns:
    """Growable column arrays (amortised O(1) append, slices without copying lists)."""

    num_distributions: int
    num_objectives: int
    size: int = 0
    seq: np.ndarray = field(init=False)
    step: np.ndarray = field(init=False)
    time: np.ndarray = field(init=False)
    series: dict[str, np.ndarray] = field(init=False)
    reward_weights: np.ndarray = field(init=False)
    reward_scale: np.ndarray = field(init=False)
    hypervolume: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._allocate(64)

    def _allocate(self, capacity: int) -> None:
        d, k = self.num_distributions, self.num_objectives
        old = {name: getattr(self, name, None)
               for name in ("seq", "step", "time", "reward_weights", "reward_scale",
                            "hypervolume")}
        old_series = getattr(self, "series", {})
        self.seq = np.zeros(capacity, dtype=np.int64)
        self.step = np.zeros(capacity, dtype=np.int64)
        self.time = np.zeros(capacity)
        self.reward_weights = np.zeros((capacity, k))
        self.reward_scale = np.zeros(capacity)
        self.hypervolume = np.zeros(capacity)
        self.series = {name: np.zeros((capacity, d), dtype=bool if name in _FLAGS
                                      else np.float64) for name in DISTRIBUTION_SERIES}
        n = self.size
        for name, array in old.items():
            if array is not None:
                getattr(self, name)[:n] = array[:n]
        for name, array in old_series.items():
            self.series[name][:n] = array[:n]

    def append(self, seq: int, step: int, stamp: float, point: ProgressPoint) -> None:
        if self.size == self.seq.size:
            self._allocate(2 * self.seq.size)
        i = self.size
        self.seq[i], self.step[i], self.time[i] = seq, step, stamp
        series = self.series
        series["probability"][i] = point.probabilities
        series["success"][i] = point.success
        series["mean_abs_advantage"][i] = point.mean_abs_advantage
        series["zero_variance_fraction"][i] = point.zero_variance
        series["stalled"][i] = point.stalled
        series["saturated"][i] = point.saturated
        series["hopeless"][i] = point.hopeless
        self.reward_weights[i] = point.reward_weights
        self.reward_scale[i] = point.reward_scale
        self.hypervolume[i] = point.hypervolume
        self.size += 1


@dataclass
class _Trace:
    """One curriculum's replayed history: the engine at `seq` and a row per report."""

    created_at: datetime
    spec: CurriculumSpec
    engine: CurriculumEngine
    seq: int
    first_seq: int
    columns: _Columns
    lock: threading.Condition = field(default_factory=threading.Condition)
    target: int = 0  # the head a background replay works towards
    replaying: bool = False  # a background replay thread is running
    failure: BaseException | None = None  # what stopped the last background replay


class HistoryService:
    """Builds and caches histories; thread-safe (one lock per curriculum)."""

    def __init__(self, store: Store, capacity: int = CACHE_SIZE) -> None:
        self.store = store
        self.capacity = capacity
        self._traces: OrderedDict[str, _Trace] = OrderedDict()
        self._guard = threading.Lock()

    def history(self, name: str, every: int | None = None, since: int | None = None,
                wait_s: float | None = None) -> CurriculumHistory:
        """Rows (seq >= `since`, at multiples of `every`, plus the last) of `name`.

        With `wait_s`, answers after at most that long with the rows replayed so far
        (`complete` false while a long replay goes on); None waits until it is done.
        Raises CurriculumNotFound, InvalidDownsampling (`every` < 1) and
        HistoryOutOfRange (`since` beyond the head or negative); nothing is changed."""
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or not 1 <= every <= MAX_INT):
            raise InvalidDownsampling(
                f"every must be an integer in [1, {MAX_INT}]; got {every!r}",
                {"field": "every", "minimum": 1, "maximum": MAX_INT})
        head = self.store.head(name)
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                                  or not 0 <= since <= head.head_seq):
            raise HistoryOutOfRange(
                f"since must be a sequence number in [0, {head.head_seq}] (the curriculum's "
                f"last report); got {since!r}",
                {"field": "since", "head_seq": head.head_seq})
        for attempt in range(2):
            trace = self._trace(name, head.created_at, head.head_seq)
            try:
                upto = self._advance(name, trace, head.head_seq, wait_s)
            except _Gap:
                if attempt:
                    raise
                self.forget(name)  # pruned under us: rebuild from a snapshot
                continue
            with trace.lock:
                return _select(name, trace, head.head_seq, upto, every, since or 0)
        raise AssertionError("unreachable")

    def _advance(self, name: str, trace: _Trace, head_seq: int,
                 wait_s: float | None) -> int:
        """Bring `trace` towards `head_seq`: inline for a few reports, else in a
        background replay waited for up to `wait_s` (None: until done). Returns the seq
        the rows reach."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with trace.lock:
            if not trace.replaying and head_seq - trace.seq <= INLINE_FOLDS:
                self._extend(name, trace, head_seq)
                return trace.seq
            trace.target = max(trace.target, head_seq)
            if not trace.replaying:
                trace.replaying, trace.failure = True, None
                threading.Thread(target=self._replay, args=(name, trace), daemon=True,
                                 name=f"paceline-history-{name}").start()
            while trace.replaying and trace.seq < head_seq:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                trace.lock.wait(left)
            if trace.failure is not None and trace.seq < head_seq:
                failure, trace.failure = trace.failure, None
                raise failure
            return min(trace.seq, head_seq)

    def _replay(self, name: str, trace: _Trace) -> None:
        """Background replay: fold `CHUNK` events per turn of the lock (the store is read
        outside it), so requests can take what is there in between."""
        try:
            while True:
                with trace.lock:
                    seq, target = trace.seq, trace.target
                    if seq >= target:
                        break
                events = list(self.store.events(name, after_seq=seq,
                                                limit=min(CHUNK, target - seq)))
                with trace.lock:
                    if not events:
                        raise _Gap(f"event log of {name!r} ends at seq {seq}")
                    self._fold(name, trace, events)
                    trace.lock.notify_all()
        except BaseException as exc:  # handed to the waiting requests
            with trace.lock:
                trace.failure = exc
        finally:
            with trace.lock:
                trace.replaying = False
                trace.lock.notify_all()

    # ------------------------------------------------------------------ cache
    def _trace(self, name: str, created_at: datetime, head_seq: int) -> _Trace:
        with self._guard:
            trace = self._traces.get(name)
            if trace is not None and trace.created_at == created_at:
                self._traces.move_to_end(name)
                return trace
        trace = self._build(name, created_at, head_seq)
        with self._guard:
            current = self._traces.get(name)
            if current is not None and current.created_at == created_at:
                return current  # built concurrently: keep the first
            self._traces[name] = trace
            while len(self._traces) > self.capacity:
                self._traces.popitem(last=False)
        return trace

    def forget(self, name: str) -> None:
        with self._guard:
            self._traces.pop(name, None)

    def _build(self, name: str, created_at: datetime, head_seq: int) -> _Trace:
        """A trace at the start of what the store holds: seq 0 with a fresh engine, or,
        when the first events were pruned, the newest snapshot the log continues from."""
        record = self.store.get_curriculum(name)
        spec = CurriculumSpec.from_dict(record.spec)
        first = next(iter(self.store.events(name, after_seq=0, limit=1)), None)
        engine, seq, stamp = CurriculumEngine(spec), 0, record.created_at
        if first is not None and first.seq > 1:
            snapshot = (self.store.latest_snapshot(name, at_most=first.seq - 1)
                        or self.store.latest_snapshot(name, at_most=head_seq))
            if snapshot is not None:
                engine = CurriculumEngine.from_bytes(spec, snapshot.state)
                seq, stamp = snapshot.seq, snapshot.created_at
        columns = _Columns(spec.layout.num_distributions, len(spec.objectives))
        columns.append(seq, -1, stamp.timestamp(), engine.progress())
        return _Trace(created_at, spec, engine, seq, seq, columns)

    def _extend(self, name: str, trace: _Trace, head_seq: int) -> None:
        """Fold the reports committed after the trace (caller holds its lock)."""
        if trace.seq < head_seq:
            self._fold(name, trace, self.store.events(name, after_seq=trace.seq,
                                                      limit=head_seq - trace.seq))

    @staticmethod
    def _fold(name: str, trace: _Trace, events: Iterable[EventRecord]) -> None:
        """Fold events in order, recording a row after each (caller holds the lock)."""
        for event in events:
            if event.seq != trace.seq + 1:
                raise _Gap(f"event log of {name!r} has a gap after seq {trace.seq}")
            trace.engine.apply(decode_report(event.payload))
            trace.seq = event.seq
            trace.columns.append(event.seq, event.step, event.created_at.timestamp(),
                                 trace.engine.progress())


class _Gap(RuntimeError):
    """The events after a trace were pruned (a snapshot covers them)."""


def auto_every(rows: int, limit: int = MAX_POINTS) -> int:
    """The smallest `every` that keeps a range of `rows` reports within `limit` rows."""
    return max(1, math.ceil(rows / limit))


def _select(name: str, trace: _Trace, head_seq: int, upto: int, every: int | None,
            since: int) -> CurriculumHistory:
    """Rows with since <= seq <= upto at multiples of `every`, plus the row at `upto`."""
    columns = trace.columns
    n = int(np.searchsorted(columns.seq[:columns.size], upto, side="right"))
    seq = columns.seq[:n]
    start = int(np.searchsorted(seq, since, side="left"))
    first_seq = int(seq[start]) if start < n else head_seq
    step_every = every if every is not None else auto_every(head_seq - min(first_seq, head_seq))
    keep = np.flatnonzero(seq[start:n] % step_every == 0) + start
    if start < n and (keep.size == 0 or keep[-1] != n - 1):
        keep = np.append(keep, n - 1)  # the last row is always there
    return CurriculumHistory(
        name=name, head_seq=head_seq, first_seq=trace.first_seq, every=step_every,
        complete=upto >= head_seq, replayed_seq=upto,
        objectives=trace.spec.objective_names, distributions=trace.spec.layout.names,
        seq=seq[keep], step=columns.step[keep], time=columns.time[keep],
        series={key: values[keep] for key, values in columns.series.items()},
        reward_weights=columns.reward_weights[keep],
        reward_scale=columns.reward_scale[keep], hypervolume=columns.hypervolume[keep])
