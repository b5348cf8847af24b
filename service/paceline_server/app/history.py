"""A curriculum's history: the per-report rows the store keeps, read back without a fold.

The rows are `ProgressPoint`s, the engine's state observed after every report. The
service's report path computes one after each fold and before the append (O(D + k), the
engine is at hand): the INSERT that appends the report stores it in the event's own row
(`events.progress`), and the rows are kept in memory until a snapshot is due, then packed
and stored as a checkpoint chunk in the same transaction (`CurriculumWriter.put_history`);
sooner when `pending_rows` wait (1000, fewer when they would pass `MAX_PENDING_BYTES`:
at 10 000 distributions, 11), so a curriculum reported to keeps at most about 4 MiB.
A history request chains the stored chunks from seq 1 and reads the rows stored with the
events after the last one, so a freshly started server answers a long curriculum at any
head position without folding a report; chunks outlive pruned events. Events without a
row (written or imported by a version before `events.progress`) are folded from the
snapshot before them, as is a range no chunk covers (reports folded before a restart but
after the last checkpoint, another replica's reports, a curriculum older than
checkpoints), which is also filled in the background. An import stores the rows of the
reports it folds the same way (`store_imported_rows`; a merge goes through `record`).
Rows are exact: a stored row holds the same numbers a replay of the log from seq 0
computes (tested).

Cost (see docs/benchmarks.md, "History", and docs/dashboard.md):
- report path: one `progress()` per report, packed into its event's INSERT (one column
  more, no statement more: 1 + 8·(4D + k + 2) + 3D bytes, 173 with 4 distributions and 2
  objectives) and, every `snapshot_every` reports (or `pending_rows`, when fewer), one
  INSERT of the packed chunk plus a read of its events' times (8·(4D + k + 4) + 3D bytes
  per report, about 170).
- first request of a process: read and unpack the chunks (O(reports) bytes, no fold:
  3-20 ms for 10 000 reports) and the rows of the events after the last chunk (fewer than
  `snapshot_every`, one SELECT without the reports' payloads); a fold per report only for
  events without a row (about 1 ms each on a quiet machine), and without chunks one fold
  per such stored report as before. Kept in memory: `row_bytes` per report (35·D + 8·k
  + 40) and, once a fold needed one, an engine, for at most `CACHE_SIZE` curricula and
  `max_bytes` (`PACELINE_HISTORY_CACHE_BYTES`) in all, least recently used dropped
  first. The dashboard starts this in the background when its page shell is requested
  (`prefetch`). A long replay runs in a background thread: a request given `wait_s`
  answers after at most that long with the rows so far (`complete` false) while the
  replay goes on.
- a history whose rows up to the head would not fit `max_bytes` is never cached: each
  request reads the same rows in the same order (`_stream`: checkpoints in batches of
  about `CHUNK_BYTES`, then the events' rows in pages) through a `_Selection` that keeps
  only those it returns, so it holds O(rows returned · D + one batch) and answers what
  the cached path answers, bit for bit; a long replay there is a background fill that
  stores the rows as checkpoints, which the partial answer and the next request read.
- later requests: the new reports' stored rows (one SELECT; folds only where an event
  has none: inline when fewer than `INLINE_FOLDS`), then O(rows returned) to select and
  encode.
- `every` downsamples to the rows at multiples of `every` plus the head; left out, it is
  the smallest that keeps at most `MAX_POINTS` rows, so a 100 000-report curriculum
  answers with 992 rows (every 101), not 100 001.

A snapshot this code cannot read (`StateVersionError`: a strategy state version that no
longer migrates) is set aside as the engine cache does: the engine is rebuilt by folding
the log from its first event, when the log still holds it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np

from paceline_server.app.codec import decode_report
from paceline_server.app.engines import cached_bytes
from paceline_server.domain.errors import HistoryOutOfRange, InvalidDownsampling
from paceline_server.domain.history import (
    DISTRIBUTION_SERIES,
    CurriculumHistory,
    ProgressPoint,
    RowChunk,
    pack_rows,
    point_series,
    unpack_points,
    unpack_rows,
)
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.domain.validation import MAX_INT
from paceline_server.engine import CurriculumEngine
from paceline_server.store.base import CurriculumRecord, CurriculumWriter, EventRecord, Store
from paceline_server.strategies.state_codec import StateVersionError

if TYPE_CHECKING:
    from paceline_server.app.engines import CachedEngine

_log = logging.getLogger(__name__)

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
#: how long a request waits for a prefetch of the same history before building its own
PREFETCH_WAIT_S = 5.0
#: a first request that reads more chunks than this merges them, in the background, into
#: chunks of about `MERGED_ROWS` rows (fewer, larger chunks unpack faster next time)
MERGE_CHUNKS = 20
MERGED_ROWS = 10_000
#: rows stored with the events read per query (a log whose events hold none stops early)
STORED_PAGE = 2000
#: The most bytes of rows read or written at once: a page of the rows stored with the
#: events, a batch of checkpoints, a merged or filled chunk (a row is about 35 bytes per
#: distribution, so at 10 000 distributions a fixed count of rows was gigabytes).
CHUNK_BYTES = 4 * 1024**2
#: Bytes of the histories a service keeps in memory (`PACELINE_HISTORY_CACHE_BYTES`).
HISTORY_CACHE_BYTES = 256 * 1024**2
#: rows the report path keeps in memory before it stores them, snapshot due or not
MAX_PENDING_ROWS = 1000
#: ... and their bytes (`row_bytes` each): per curriculum reported to, outside the
#: cache's budget, so 1000 rows of 10 000 distributions (350 MB) are not kept
MAX_PENDING_BYTES = CHUNK_BYTES
_FLAGS = ("stalled", "saturated", "hopeless")
#: Held while a fresh engine is built for a history's seq-0 row: that engine holds a
#: whole state (hundreds of MB at 10⁷ samples, 2 GiB at the budget), and the dashboard
#: prefetches several histories at once, so at most one is built at a time per process.
_FRESH_ENGINES = threading.Lock()


def row_bytes(num_distributions: int, num_objectives: int) -> int:
    """Bytes one row takes in a cached history (`_Columns`): seq, step, time, four float
    and three flag series per distribution, the weights, scale and hypervolume."""
    return 8 * 3 + (4 * 8 + 3) * num_distributions + 8 * num_objectives + 16


def _rows_in(budget: int, size: int) -> int:
    """How many rows of `size` bytes fit in `budget` (at least one)."""
    return max(1, budget // max(1, size))


class _Rows(Protocol):
    """Where a history's rows go, in seq order: all kept (`_Columns`, the cache) or only
    those a response returns (`_Selection`, a history too long for the cache)."""

    def append(self, seq: int, step: int, stamp: float, point: ProgressPoint) -> None: ...

    def extend(self, chunk: RowChunk, skip: int = 0) -> None: ...

    def reserve(self, rows: int) -> None: ...

    def clear(self) -> None: ...


@dataclass
class _Columns:
    """Growable column arrays (amortised O(1) append, slices without copying lists);
    never more than `max_rows` allocated beyond what is asked for (the cache's budget)."""

    num_distributions: int
    num_objectives: int
    max_rows: int | None = None
    size: int = 0
    seq: np.ndarray = field(init=False)
    step: np.ndarray = field(init=False)
    time: np.ndarray = field(init=False)
    series: dict[str, np.ndarray] = field(init=False)
    reward_weights: np.ndarray = field(init=False)
    reward_scale: np.ndarray = field(init=False)
    hypervolume: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._allocate(64 if self.max_rows is None else max(1, min(64, self.max_rows)))

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays as allocated (what the cache's budget counts)."""
        return (self.seq.nbytes + self.step.nbytes + self.time.nbytes
                + self.reward_weights.nbytes + self.reward_scale.nbytes
                + self.hypervolume.nbytes + sum(v.nbytes for v in self.series.values()))

    def clear(self) -> None:
        self.size = 0

    def reserve(self, rows: int) -> None:
        """Room for `rows` rows in all (one allocation, not log2(rows))."""
        self._reserve(rows - self.size)

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

    def _reserve(self, rows: int) -> None:
        if self.size + rows > self.seq.size:
            grown = 2 * self.seq.size
            if self.max_rows is not None:
                grown = min(grown, self.max_rows)
            self._allocate(max(grown, self.size + rows))

    def append(self, seq: int, step: int, stamp: float, point: ProgressPoint) -> None:
        self._reserve(1)
        i = self.size
        self.seq[i], self.step[i], self.time[i] = seq, step, stamp
        for name, values in point_series(point).items():
            self.series[name][i] = values
        self.reward_weights[i] = point.reward_weights
        self.reward_scale[i] = point.reward_scale
        self.hypervolume[i] = point.hypervolume
        self.size += 1

    def extend(self, chunk: RowChunk, skip: int = 0) -> None:
        """Append the chunk's rows from its `skip`-th on (one copy per column)."""
        n = int(chunk.step.size) - skip
        self._reserve(n)
        i, j = self.size, self.size + n
        self.seq[i:j] = np.arange(chunk.first_seq + skip, chunk.first_seq + skip + n)
        self.step[i:j] = chunk.step[skip:]
        self.time[i:j] = chunk.time[skip:]
        for name in DISTRIBUTION_SERIES:
            self.series[name][i:j] = chunk.series[name][skip:]
        self.reward_weights[i:j] = chunk.reward_weights[skip:]
        self.reward_scale[i:j] = chunk.reward_scale[skip:]
        self.hypervolume[i:j] = chunk.hypervolume[skip:]
        self.size = j

    def tail(self, after_seq: int) -> RowChunk:
        """The rows after `after_seq` (consecutive seqs) as a chunk to store."""
        start = int(np.searchsorted(self.seq[:self.size], after_seq, side="right"))
        return _chunk_of(self, start, self.size)


def _chunk_of(columns: _Columns, start: int, stop: int) -> RowChunk:
    return RowChunk(first_seq=int(columns.seq[start]), step=columns.step[start:stop],
                    time=columns.time[start:stop],
                    series={k: v[start:stop] for k, v in columns.series.items()},
                    reward_weights=columns.reward_weights[start:stop],
                    reward_scale=columns.reward_scale[start:stop],
                    hypervolume=columns.hypervolume[start:stop])


#: the columns of a row, with their dtypes and whether they are [n, D] or [n, k]
_COLUMN_TYPES: tuple[tuple[str, type, str], ...] = (
    ("seq", np.int64, ""), ("step", np.int64, ""), ("time", np.float64, ""),
    *((name, bool if name in _FLAGS else np.float64, "d") for name in DISTRIBUTION_SERIES),
    ("reward_weights", np.float64, "k"), ("reward_scale", np.float64, ""),
    ("hypervolume", np.float64, ""))


class _Selection:
    """Rows taken in seq order of which only those a response returns are kept: from
    `since` on, at multiples of `every` (left out: `fitting_every` from the first row
    at or after `since`, as `_select` picks it), and the latest one; none beyond
    `head_seq`. A history whose rows would not fit the cache is read through one, so a
    request holds O(rows returned · D), not O(reports · D), and `history` gives what
    `_select` gives over the same rows, bit for bit (tested)."""

    def __init__(self, num_distributions: int, num_objectives: int, since: int,
                 every: int | None, head_seq: int) -> None:
        self.shapes = {"": (), "d": (num_distributions,), "k": (num_objectives,)}
        self.since, self.asked, self.head_seq = since, every, head_seq
        self.clear()

    def clear(self) -> None:
        self.every = self.asked
        self._parts: list[dict[str, np.ndarray]] = []
        self._kept_seq = -1  # the last row kept in `_parts`
        self._last: dict[str, np.ndarray] | None = None  # the latest row from `since` on

    def reserve(self, rows: int) -> None:
        """Nothing to reserve: the rows kept are few."""

    def append(self, seq: int, step: int, stamp: float, point: ProgressPoint) -> None:
        self._take({
            "seq": np.asarray([seq], dtype=np.int64), "step": np.asarray([step], np.int64),
            "time": np.asarray([stamp], dtype=np.float64),
            **{name: values[None] for name, values in point_series(point).items()},
            "reward_weights": point.reward_weights[None],
            "reward_scale": np.asarray([point.reward_scale], dtype=np.float64),
            "hypervolume": np.asarray([point.hypervolume], dtype=np.float64)})

    def extend(self, chunk: RowChunk, skip: int = 0) -> None:
        n = int(chunk.step.size) - skip
        self._take({"seq": np.arange(chunk.first_seq + skip, chunk.first_seq + skip + n,
                                     dtype=np.int64),
                    "step": chunk.step[skip:], "time": chunk.time[skip:],
                    **{name: values[skip:] for name, values in chunk.series.items()},
                    "reward_weights": chunk.reward_weights[skip:],
                    "reward_scale": chunk.reward_scale[skip:],
                    "hypervolume": chunk.hypervolume[skip:]})

    def _take(self, rows: dict[str, np.ndarray]) -> None:
        seq = rows["seq"]
        start = int(np.searchsorted(seq, self.since, side="left"))
        stop = int(np.searchsorted(seq, self.head_seq, side="right"))
        if start >= stop:
            return
        if self.every is None:  # the first row from `since` on decides it, as in `_select`
            self.every = fitting_every(min(int(seq[start]), self.head_seq), self.head_seq)
        keep = np.flatnonzero(seq[start:stop] % self.every == 0) + start
        if keep.size:  # fancy indexing copies: the chunk read is not held on to
            self._parts.append({name: self._typed(name, values[keep])
                                for name, values in rows.items()})
            self._kept_seq = int(seq[keep[-1]])
        self._last = {name: self._typed(name, values[stop - 1:stop].copy())
                      for name, values in rows.items()}

    @staticmethod
    def _typed(name: str, values: np.ndarray) -> np.ndarray:
        dtype = _DTYPES[name]
        return values if values.dtype == dtype else values.astype(dtype)

    def history(self, name: str, trace: _Trace, upto: int) -> CurriculumHistory:
        """The rows kept, as `_select` answers over all the rows up to `upto` (every row
        taken is at or before it)."""
        parts = list(self._parts)
        if self._last is not None and int(self._last["seq"][0]) != self._kept_seq:
            parts.append(self._last)  # the last row is always there
        every = self.every if self.every is not None else fitting_every(self.head_seq,
                                                                        self.head_seq)
        columns = {}
        for column, dtype, shape in _COLUMN_TYPES:
            columns[column] = (np.concatenate([part[column] for part in parts]) if parts
                               else np.empty((0, *self.shapes[shape]), dtype=dtype))
        return CurriculumHistory(
            name=name, head_seq=self.head_seq, first_seq=trace.first_seq, every=every,
            complete=upto >= self.head_seq, replayed_seq=upto,
            objectives=trace.spec.objective_names, distributions=trace.spec.layout.names,
            seq=columns["seq"], step=columns["step"], time=columns["time"],
            series={key: columns[key] for key in DISTRIBUTION_SERIES},
            reward_weights=columns["reward_weights"], reward_scale=columns["reward_scale"],
            hypervolume=columns["hypervolume"])


_DTYPES = {name: np.dtype(dtype) for name, dtype, _ in _COLUMN_TYPES}


@dataclass
class _Trace:
    """One curriculum's history in memory: rows through `seq` and an engine that has
    folded the log through `engine_seq` (None until a fold needs it: rows read from
    checkpoints need no engine). A history too long for the cache is read through a
    trace of its own whose rows are a `_Selection`, never cached."""

    created_at: datetime
    spec: CurriculumSpec
    engine: CurriculumEngine | None
    engine_seq: int
    seq: int
    first_seq: int
    columns: _Rows
    lock: threading.Condition = field(default_factory=threading.Condition)
    target: int = 0  # the head a background replay works towards
    replaying: bool = False  # a background replay thread is running
    failure: BaseException | None = None  # what stopped the last background replay
    nbytes: int = 0  # what the cache counts for it (rows allocated, engine); its guard


@dataclass
class _Pending:
    """Rows the report path computed since its last checkpoint (seqs first_seq, ...)."""

    created_at: datetime
    engine: CurriculumEngine  # the rows' engine: a reloaded one starts afresh
    first_seq: int
    most: int  # rows kept at most (`pending_rows`)
    steps: list[int] = field(default_factory=list)
    points: list[ProgressPoint] = field(default_factory=list)


def pending_rows(spec: CurriculumSpec) -> int:
    """The most rows of `spec`'s history kept before they are stored, snapshot due or
    not: `MAX_PENDING_ROWS`, fewer when they would take more than `MAX_PENDING_BYTES`
    (many distributions). The chunk stored is then bounded in bytes too."""
    size = row_bytes(spec.layout.num_distributions, len(spec.objectives))
    return min(MAX_PENDING_ROWS, _rows_in(MAX_PENDING_BYTES, size))


def checkpoint_due(seq: int, rows: int, every: int, most: int) -> bool:
    """Whether the `rows` kept up to the report at `seq` are stored as a checkpoint chunk
    now: with the snapshot (`seq % every == 0`) or once `most` (`pending_rows`) wait."""
    return seq % every == 0 or rows >= most


def store_imported_rows(writer: CurriculumWriter, spec: CurriculumSpec, first_seq: int,
                        steps: list[int], rows: list[bytes]) -> None:
    """Store the packed rows (`pack_point`) of events `first_seq`.. that an import just
    appended through `writer` as one checkpoint chunk, as `HistoryService.record` does
    for the report path: a fresh server then answers an imported curriculum's history
    without folding it, and no gap is left for a background fill."""
    if not rows:
        return
    last = first_seq + len(rows) - 1
    times = writer.event_times(first_seq, last)
    chunk = unpack_points(first_seq, np.asarray(steps, dtype=np.int64),
                          np.asarray([stamp.timestamp() for _, stamp in times]), rows,
                          spec.layout.num_distributions, len(spec.objectives))
    writer.put_history(first_seq, last, pack_rows(chunk))


class HistoryService:
    """Builds and caches histories; records the report path's rows and stores them as
    checkpoints. Thread-safe (one lock per curriculum)."""

    def __init__(self, store: Store, capacity: int = CACHE_SIZE,
                 max_bytes: int = HISTORY_CACHE_BYTES) -> None:
        self.store = store
        self.capacity = capacity
        #: Bytes the cached traces may hold together (their rows as allocated, and the
        #: engines replays needed): the least recently used go first, and a history
        #: whose rows alone would not fit is answered without caching it (`_stream`).
        self.max_bytes = max_bytes
        self.nbytes = 0  # what the cached traces hold now (`_Trace.nbytes`, summed)
        self._traces: OrderedDict[str, _Trace] = OrderedDict()
        self._guard = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._filling: set[tuple[str, int]] = set()
        self._stream_fills: dict[str, threading.Thread] = {}  # see `_stream_rest`
        self._start_points: OrderedDict[tuple[str, datetime], ProgressPoint] = OrderedDict()
        self._building: dict[str, threading.Event] = {}  # prefetches under way
        #: background fills and merges still running (`wait_for_fills`); finished ones
        #: are let go as the next starts, so a long-running service keeps none of them
        self._fills: list[threading.Thread] = []
        #: reports folded to compute rows (the rows stored with the events need none):
        #: how tests and the benchmark tell a stored answer from a replayed one
        self.folds = 0

    # ------------------------------------------------------------ report path
    def record(self, writer: CurriculumWriter, cached: CachedEngine, seq: int, step: int,
               every: int, point: ProgressPoint) -> None:
        """The report at `seq` was just folded into `cached.engine` and appended through
        `writer` with `point`, its row (`cached.engine.progress()`, also stored in the event's
        own row): keep the row, and store the rows kept so far as a checkpoint chunk when a
        snapshot is due (`seq % every == 0`) or `pending_rows` are waiting. Called by
        the report path under the curriculum's engine lock. Rows start afresh when the seq
        does not follow (another replica's reports were folded in between) or the engine
        is not the one they came from (a failed transaction reloads it: its folds may not
        have committed); the rows left out are a gap, which the next checkpoint notices
        and fills in the background."""
        name = cached.spec.name
        with self._guard:
            pending = self._pending.get(name)
            if (pending is None or pending.created_at != cached.created_at
                    or pending.engine is not cached.engine
                    or not pending.first_seq <= seq <= pending.first_seq + len(pending.steps)):
                pending = self._pending[name] = _Pending(cached.created_at, cached.engine,
                                                         seq, pending_rows(cached.spec))
            keep = seq - pending.first_seq
            del pending.steps[keep:], pending.points[keep:]
            pending.steps.append(step)
            pending.points.append(point)
            if not checkpoint_due(seq, len(pending.steps), every, pending.most):
                return
            del self._pending[name]
        self._checkpoint(writer, name, cached.spec, pending)

    def _checkpoint(self, writer: CurriculumWriter, name: str, spec: CurriculumSpec,
                    pending: _Pending) -> None:
        first, last = pending.first_seq, pending.first_seq + len(pending.steps) - 1
        times = writer.event_times(first, last)
        if [seq for seq, _ in times] != list(range(first, last + 1)):
            _log.warning("history rows %d..%d of %r not stored: their events are not all in "
                         "the log", first, last, name)
            return
        columns = _Columns(spec.layout.num_distributions, len(spec.objectives))
        for (seq, stamp), step, point in zip(times, pending.steps, pending.points,
                                             strict=True):
            columns.append(seq, step, stamp.timestamp(), point)
        writer.put_history(first, last, pack_rows(_chunk_of(columns, 0, columns.size)))
        before = writer.last_history_seq(first)
        if before < first - 1:
            self._start_fill(name, pending.created_at, before, first - 1)

    # ------------------------------------------------------------ filling gaps
    def _start_fill(self, name: str, created_at: datetime, after: int, upto: int) -> None:
        """Store rows after..upto as a checkpoint chunk in a background thread (once at a
        time per range): a restart lost the rows kept in memory, another replica folded
        them, or the curriculum predates checkpoints. The rows stored with the events are
        read, not recomputed; only events without one are folded."""
        key = (name, upto)
        with self._guard:
            if key in self._filling:
                return
            self._filling.add(key)
        thread = threading.Thread(target=self._fill, args=(name, created_at, after, upto),
                                  daemon=True, name=f"paceline-history-fill-{name}")
        with self._guard:
            self._start_background(thread)

    def _start_background(self, thread: threading.Thread) -> None:
        """Start a fill or merge and remember it while it runs (caller holds the guard:
        started under it, a thread just added is never taken for a finished one)."""
        self._fills = [running for running in self._fills if running.is_alive()]
        self._fills.append(thread)
        thread.start()

    def wait_for_fills(self, timeout: float | None = None) -> bool:
        """Wait until no background fill or merge runs (those started meanwhile too), or
        `timeout` seconds pass; returns whether none runs. For tests and benchmarks:
        what they store is then in the store."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._guard:
                running = [thread for thread in self._fills if thread.is_alive()]
            if not running:
                return True
            for thread in running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                thread.join(left)

    def _fill(self, name: str, created_at: datetime, after: int, upto: int) -> None:
        """Store rows after..upto as chunks of at most `_chunk_rows` rows, in order: a
        long range (a log from before checkpoints) is never held whole, and a reader
        chains what is stored so far."""
        try:
            record = self.store.get_curriculum(name)
            if record.created_at != created_at:
                return
            spec = CurriculumSpec.from_dict(record.spec)
            d, k = spec.layout.num_distributions, len(spec.objectives)
            engine: CurriculumEngine | None = None
            engine_seq = 0
            start = after
            while start < upto:
                stop = min(upto, start + self._chunk_rows(spec))
                columns = _Columns(d, k)
                reached = self._stored_rows(name, spec, columns, start, stop)
                if reached < stop:  # events without a row from `reached + 1` on: fold them
                    if engine is None or engine_seq != reached:  # else it folded to here
                        engine, engine_seq = self._engine_at(name, spec, reached)
                    trace = _Trace(created_at, spec, engine, engine_seq, reached, start,
                                   columns)
                    self._fold(name, trace, self.store.events(
                        name, after_seq=engine_seq, limit=stop - engine_seq))
                    engine_seq, reached = trace.engine_seq, trace.seq
                if reached != stop:
                    raise _Gap(f"event log of {name!r} ends at seq {reached}")
                # Conditional on the curriculum checked above: it may have been deleted
                # and created again while the rows were read and folded.
                self.store.put_history(name, start + 1, stop, pack_rows(columns.tail(start)),
                                       created_at=created_at)
                start = stop
        except Exception as exc:  # a request replays what a fill could not store
            _log.warning("history rows %d..%d of %r not filled: %r", after + 1, upto, name,
                         exc)
        finally:
            with self._guard:
                self._filling.discard((name, upto))

    # ------------------------------------------------------------ requests
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
                if trace is None:  # its rows would not fit the cache's budget
                    return self._stream(name, head.created_at, head.head_seq, every,
                                        since or 0, wait_s)
                upto = self._advance(name, trace, head.head_seq, wait_s)
            except _Gap:
                if attempt:
                    raise
                with self._guard:  # pruned under us: rebuild from a snapshot
                    self._drop(name)
                continue
            with trace.lock:
                view = _select(name, trace, head.head_seq, upto, every, since or 0)
            self._account(name, trace)
            return view
        raise AssertionError("unreachable")

    def _advance(self, name: str, trace: _Trace, head_seq: int,
                 wait_s: float | None) -> int:
        """Bring `trace` towards `head_seq`: inline for a few reports, else in a
        background replay waited for up to `wait_s` (None: until done). Returns the seq
        the rows reach."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with trace.lock:
            if trace.seq >= head_seq and not trace.replaying:
                return head_seq
            if not trace.replaying:  # rows stored with the events: no fold
                trace.seq = self._stored_rows(name, trace.spec, trace.columns, trace.seq,
                                              head_seq)
                if trace.seq >= head_seq:
                    return head_seq
            if trace.engine is None:
                trace.engine, trace.engine_seq = self._engine_at(name, trace.spec, trace.seq,
                                                                  head_seq)
            if not trace.replaying and head_seq - trace.engine_seq <= INLINE_FOLDS:
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
                    seq, target = trace.engine_seq, trace.target
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

    # ------------------------------------------------------------ streamed
    def _stream(self, name: str, created_at: datetime, head_seq: int, every: int | None,
                since: int, wait_s: float | None) -> CurriculumHistory:
        """A history whose rows would not fit the cache: the rows are read as a cached
        trace reads them (`_populate`: the checkpoints, a batch at a time, then the rows
        stored with the events, a page at a time; folds where there are none), through
        a `_Selection` that keeps only those the response returns. Nothing is cached:
        each request reads again (O(reports) bytes read, O(rows returned · D + a batch)
        held)."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        record = self.store.get_curriculum(name)
        spec = CurriculumSpec.from_dict(record.spec)
        rows = _Selection(spec.layout.num_distributions, len(spec.objectives), since, every,
                          head_seq)
        trace = self._populate(name, created_at, record, spec, rows, head_seq, merge=False)
        upto = self._stream_rest(name, trace, head_seq, deadline)
        return rows.history(name, trace, upto)

    def _stream_rest(self, name: str, trace: _Trace, head_seq: int,
                     deadline: float | None) -> int:
        """Bring a streamed trace to `head_seq`, as `_advance` brings a cached one: rows
        stored with the events are read; a few folds (`INLINE_FOLDS`, or those after the
        snapshot a pruned log skips to) are done here. For more, a background fill stores
        their rows as checkpoints (in chunks, so never all at once) and the request
        reads what it has stored when it ends or `deadline` passes (a partial answer,
        `complete` false, as a cached replay gives): the next request finds them stored
        instead of folding again. Returns the seq the rows reach."""
        spec = trace.spec
        while trace.seq < head_seq:
            trace.seq = self._stored_rows(name, spec, trace.columns, trace.seq, head_seq)
            if trace.seq >= head_seq:
                break
            if trace.engine is None:
                trace.engine, trace.engine_seq = self._engine_at(name, spec, trace.seq,
                                                                 head_seq)
            if trace.engine_seq > trace.seq or head_seq - trace.engine_seq <= INLINE_FOLDS:
                self._extend(name, trace, head_seq)
                break
            trace.engine = None  # the fill loads its own
            fill = self._stream_fill(name, trace.created_at, trace.seq, head_seq)
            fill.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            before = trace.seq
            ranges = self._load_checkpoints(name, spec, trace.columns, after=trace.seq)
            if ranges:
                trace.seq = ranges[-1][1]
            if trace.seq >= head_seq or fill.is_alive():
                break  # done, or the rows so far
            if trace.seq == before:  # the fill stored nothing: fold here, which raises
                trace.engine, trace.engine_seq = self._engine_at(  # what stopped it
                    name, spec, trace.seq, head_seq)
                self._extend(name, trace, head_seq)
                break
        return min(trace.seq, head_seq)

    def _stream_fill(self, name: str, created_at: datetime, after: int,
                     upto: int) -> threading.Thread:
        """The background fill of a streamed history's rows after..upto; one per
        curriculum at a time (a request finding one running waits for it)."""
        with self._guard:
            running = self._stream_fills.get(name)
            if running is not None and running.is_alive():
                return running

            def fill() -> None:
                try:
                    self._fill(name, created_at, after, upto)
                finally:
                    with self._guard:
                        if self._stream_fills.get(name) is thread:
                            del self._stream_fills[name]

            thread = threading.Thread(target=fill, daemon=True,
                                      name=f"paceline-history-stream-fill-{name}")
            self._stream_fills[name] = thread
            self._start_background(thread)
        return thread

    # ------------------------------------------------------------------ cache
    def _trace(self, name: str, created_at: datetime, head_seq: int) -> _Trace | None:
        """The cached trace of `name` (built if need be), or None when its rows up to
        `head_seq` would not fit the budget: the request then reads them streamed."""
        for waited in (False, True):
            with self._guard:
                trace = self._traces.get(name)
                if trace is not None and trace.created_at == created_at:
                    if not self._fits(trace.spec, head_seq + 1):
                        self._drop(name)  # grown past the budget: streamed from now on
                        return None
                    self._traces.move_to_end(name)
                    return trace
                building = self._building.get(name)
            if waited or building is None or not building.wait(PREFETCH_WAIT_S):
                break  # else a prefetch's: look again
        built = self._build(name, created_at, head_seq)
        return None if built is None else self._keep(name, built)

    def _fits(self, spec: CurriculumSpec, rows: int) -> bool:
        """Whether `rows` rows of `spec`'s history fit the cache's budget."""
        return rows * row_bytes(spec.layout.num_distributions,
                                len(spec.objectives)) <= self.max_bytes

    def _chunk_rows(self, spec: CurriculumSpec) -> int:
        """Rows of a merged or filled chunk: `MERGED_ROWS`, fewer when they would take
        more than `CHUNK_BYTES` packed (many distributions)."""
        d, k = spec.layout.num_distributions, len(spec.objectives)
        return min(MERGED_ROWS, _rows_in(CHUNK_BYTES, 8 * (4 * d + k + 4) + 3 * d))

    def _keep(self, name: str, trace: _Trace) -> _Trace:
        nbytes = self._measure(trace)
        with self._guard:
            current = self._traces.get(name)
            if current is not None and current.created_at == trace.created_at:
                return current  # built concurrently: keep the first
            self._drop(name)
            trace.nbytes = nbytes
            self._traces[name] = trace
            self.nbytes += nbytes
            self._evict()
        return trace

    def _account(self, name: str, trace: _Trace) -> None:
        """Count what `trace` holds now (a request or replay added rows, or an engine)
        and drop the least recently used traces beyond the budget."""
        nbytes = self._measure(trace)
        with self._guard:
            if self._traces.get(name) is not trace:
                return  # dropped meanwhile
            self.nbytes += nbytes - trace.nbytes
            trace.nbytes = nbytes
            self._evict()

    def _measure(self, trace: _Trace) -> int:
        """The bytes `trace` holds: its rows as allocated and its engine's state
        (`cached_bytes`, as the engine cache counts it). An engine that would take the
        trace over the budget is let go unless a replay is using it: the next fold
        loads one from the snapshot before the rows' end, as for a trace read from
        checkpoints."""
        with trace.lock:
            columns = trace.columns
            assert isinstance(columns, _Columns)
            nbytes = columns.nbytes
            if trace.engine is None:
                return nbytes
            engine = cached_bytes(trace.spec, trace.engine)
            if nbytes + engine > self.max_bytes and not trace.replaying:
                trace.engine, trace.engine_seq = None, 0
                return nbytes
            return nbytes + engine

    def _evict(self) -> None:
        """Drop the least recently used traces while over the count or the budget
        (caller holds the guard). The newest goes too if it alone is over: a request
        using it holds it until it answers."""
        while self._traces and (len(self._traces) > self.capacity
                                or self.nbytes > self.max_bytes):
            _, dropped = self._traces.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def _drop(self, name: str) -> None:
        """Forget `name`'s trace (caller holds the guard)."""
        dropped = self._traces.pop(name, None)
        if dropped is not None:
            self.nbytes -= dropped.nbytes

    def prefetch(self, name: str, then: Callable[[], object] | None = None) -> None:
        """Build `name`'s history in a background thread unless it is cached or being
        built, then call `then` (the dashboard loads the curriculum's engine with it): the
        dashboard asks for this when its page shell is requested, so the rows are read
        while the browser loads the scripts that will ask for them. Errors (an unknown
        name) are left to the request that follows."""
        with self._guard:
            if (name in self._traces or name in self._building
                    or len(self._building) >= self.capacity):  # a bounded number at once
                return
            done = self._building[name] = threading.Event()

        def build() -> None:
            try:
                head = self.store.head(name)
                built = self._build(name, head.created_at, head.head_seq)
                if built is not None:  # else over the budget: each request streams it
                    trace = self._keep(name, built)
                    self._advance(name, trace, head.head_seq, None)
                    self._account(name, trace)
            except Exception as exc:  # the request that follows says what is wrong
                _log.debug("history prefetch of %r: %r", name, exc)
                return
            finally:
                with self._guard:
                    self._building.pop(name, None)
                done.set()  # a waiting history request goes on; `then` is not waited for
            try:
                if then is not None:
                    then()
            except Exception as exc:
                _log.debug("after the history prefetch of %r: %r", name, exc)

        threading.Thread(target=build, daemon=True, name=f"paceline-history-prefetch-{name}"
                         ).start()

    def forget(self, name: str) -> None:
        """Drop what is kept of `name` (its curriculum was deleted)."""
        with self._guard:
            self._drop(name)
            self._pending.pop(name, None)
            self._stream_fills.pop(name, None)
            for key in [key for key in self._start_points if key[0] == name]:
                del self._start_points[key]

    def _build(self, name: str, created_at: datetime, head_seq: int) -> _Trace | None:
        """A trace to cache (`_populate`), or None when its rows up to `head_seq` would
        not fit the budget."""
        record = self.store.get_curriculum(name)
        spec = CurriculumSpec.from_dict(record.spec)
        if not self._fits(spec, head_seq + 1):
            return None
        columns = _Columns(spec.layout.num_distributions, len(spec.objectives),
                           max_rows=_rows_in(self.max_bytes, row_bytes(
                               spec.layout.num_distributions, len(spec.objectives))))
        return self._populate(name, created_at, record, spec, columns, head_seq, merge=True)

    def _populate(self, name: str, created_at: datetime, record: CurriculumRecord,
                  spec: CurriculumSpec, columns: _Rows, head_seq: int,
                  merge: bool) -> _Trace:
        """A trace holding the stored checkpoints' rows: chained from seq 1 up to the
        first gap, after the row of a fresh engine at seq 0. Without any, the start of
        what the log holds: seq 0 with a fresh engine, or, when the first events were
        pruned, the newest snapshot the log continues from. With `merge`, many small
        checkpoints read are stored again as fewer (the rows are all in `columns`)."""
        engine = self._start_row(name, record, spec, columns)
        ranges = self._load_checkpoints(name, spec, columns, head_seq)
        if ranges:
            engine = None  # not needed to fold: its state goes now, not at return
            seq = self._stored_rows(name, spec, columns, ranges[-1][1], head_seq)
            trace = _Trace(created_at, spec, None, 0, seq, 0, columns)
            if merge and len(ranges) > MERGE_CHUNKS:
                self._start_merge(name, trace, ranges)
            return trace
        first = next(iter(self.store.events(name, after_seq=0, limit=1)), None)
        if first is None or first.seq == 1 or head_seq == 0:
            seq = self._stored_rows(name, spec, columns, 0, head_seq)
            return _Trace(created_at, spec, None if seq else engine, 0, seq, 0, columns)
        snapshot = (self.store.latest_snapshot(name, at_most=first.seq - 1)
                    or self.store.latest_snapshot(name, at_most=head_seq))
        if snapshot is None:
            raise _Gap(f"event log of {name!r} starts at seq {first.seq} with no snapshot")
        try:
            engine = CurriculumEngine.from_bytes(spec, snapshot.state)
        except StateVersionError as exc:
            raise _unreplayable(name, snapshot.seq, exc, 0) from exc
        columns.clear()  # the rows start at the snapshot, not at seq 0
        columns.append(snapshot.seq, -1, snapshot.created_at.timestamp(), engine.progress())
        seq = self._stored_rows(name, spec, columns, snapshot.seq, head_seq)
        if seq > snapshot.seq:  # a later fold starts from the snapshot nearest the rows
            return _Trace(created_at, spec, None, 0, seq, snapshot.seq, columns)
        return _Trace(created_at, spec, engine, snapshot.seq, snapshot.seq, snapshot.seq,
                      columns)

    def _start_row(self, name: str, record: CurriculumRecord, spec: CurriculumSpec,
                   columns: _Rows) -> CurriculumEngine | None:
        """Append the seq-0 row, a fresh engine's; returns that engine when one was built
        for it. The row is remembered for the `capacity` curricula last asked: a streamed
        history is read again on every request, and a fresh engine is a whole state."""
        key = (name, record.created_at)
        with self._guard:
            point = self._start_points.get(key)
            if point is not None:
                self._start_points.move_to_end(key)
        fresh = None
        if point is None:
            with _FRESH_ENGINES:
                fresh = CurriculumEngine(spec)
                point = fresh.progress()
            with self._guard:
                self._start_points[key] = point
                while len(self._start_points) > self.capacity:
                    self._start_points.popitem(last=False)
        columns.append(0, -1, record.created_at.timestamp(), point)
        return fresh

    def _stored_rows(self, name: str, spec: CurriculumSpec, columns: _Rows, after: int,
                     head_seq: int) -> int:
        """Append the rows stored with the events after `after` (through `head_seq`), as
        far as they run unbroken from `after + 1`; returns the seq they reach (`after`
        when none: an event written before rows were stored with it, or pruned, is
        replayed from there). Read in pages of `STORED_PAGE`, so a long log whose events
        hold no rows costs one short read, not the whole log."""
        d, k = spec.layout.num_distributions, len(spec.objectives)
        page_rows = min(STORED_PAGE, _rows_in(CHUNK_BYTES, 1 + 8 * (4 * d + k + 2) + 3 * d))
        seq = after
        while seq < head_seq:
            limit = min(page_rows, head_seq - seq)
            page = self.store.event_progress(name, seq, limit=limit)
            n = 0
            while n < len(page) and page[n].seq == seq + 1 + n \
                    and page[n].progress is not None:
                n += 1
            if n == 0:
                break
            run = page[:n]
            try:
                chunk = unpack_points(
                    seq + 1, np.fromiter((e.step for e in run), np.int64, n),
                    np.fromiter((e.created_at.timestamp() for e in run), np.float64, n),
                    [e.progress for e in run if e.progress is not None], d, k)
            except ValueError as exc:
                _log.warning("history rows stored with events %d..%d of %r not readable "
                             "(%s); replaying them", seq + 1, seq + n, name, exc)
                break
            columns.extend(chunk)
            seq += n
            if n < limit:
                break
        return seq

    def _load_checkpoints(self, name: str, spec: CurriculumSpec, columns: _Rows,
                          head_seq: int | None = None,
                          after: int = 0) -> list[tuple[int, int]]:
        """Append the stored rows chained from seq `after + 1`; returns the (first_seq,
        last_seq) of the chunks used (the last one's last_seq is where the rows end).
        Read in batches of about `CHUNK_BYTES`, each let go before the next is read;
        given `head_seq`, room for the rows up to it is made once."""
        covered = after
        ranges: list[tuple[int, int]] = []
        d, k = spec.layout.num_distributions, len(spec.objectives)
        chunk: RowChunk | None = None
        while True:
            batch = self.store.history_checkpoints(name, after_seq=covered,
                                                   max_bytes=CHUNK_BYTES)
            if not batch:
                return ranges
            if head_seq is not None and not ranges:
                columns.reserve(head_seq + 1)  # one allocation, not log2(n)
            for stored in batch:
                if stored.first_seq > covered + 1:
                    return ranges  # a gap: the rest is replayed (and filled in the background)
                if stored.last_seq <= covered:
                    continue
                chunk = unpack_rows(stored.rows)
                if (chunk.first_seq, chunk.last_seq) != (stored.first_seq, stored.last_seq) \
                        or chunk.series["probability"].shape[1] != d \
                        or chunk.reward_weights.shape[1] != k:
                    _log.warning("history checkpoint %d..%d of %r does not fit its "
                                 "curriculum; replaying from there", stored.first_seq,
                                 stored.last_seq, name)
                    return ranges
                columns.extend(chunk, skip=covered + 1 - chunk.first_seq)
                ranges.append((covered + 1, chunk.last_seq))
                covered = chunk.last_seq
            del batch  # the next batch is read without this one held
            chunk = None

    def _start_merge(self, name: str, trace: _Trace, ranges: list[tuple[int, int]]) -> None:
        """Store the rows just read as chunks of about `MERGED_ROWS` rows (each replaces
        the chunks inside its range), in a background thread: the same bytes, fewer chunks
        for the next process to read."""
        groups: list[tuple[int, int]] = []
        start, count = ranges[0][0], 0
        rows = self._chunk_rows(trace.spec)
        for first, last in ranges:
            count += 1
            if last - start + 1 >= rows or (first, last) == ranges[-1]:
                if count > 1:
                    groups.append((start, last))
                start, count = last + 1, 0

        def merge() -> None:
            try:
                for first, last in groups:
                    with trace.lock:  # rows 0..trace.seq sit at their seq's index
                        assert isinstance(trace.columns, _Columns)
                        rows = pack_rows(_chunk_of(trace.columns, first, last + 1))
                    self.store.put_history(name, first, last, rows,
                                           created_at=trace.created_at)
            except Exception as exc:  # only a speed-up: the small chunks stay
                _log.warning("history chunks of %r not merged: %r", name, exc)

        if groups:
            thread = threading.Thread(target=merge, daemon=True,
                                      name=f"paceline-history-merge-{name}")
            with self._guard:
                self._start_background(thread)

    def _engine_at(self, name: str, spec: CurriculumSpec, seq: int,
                   head_seq: int | None = None) -> tuple[CurriculumEngine, int]:
        """An engine at a position the log continues from: the newest snapshot at or
        before `seq`, else a fresh engine at 0 when the log starts at seq 1. A snapshot
        this code cannot read (StateVersionError) is replayed from the first event, as the
        engine cache does. When the log was pruned and nothing at or before `seq` is
        usable (a snapshot the log no longer continues from is not), the newest snapshot
        up to `head_seq` (the rows then skip to it)."""
        snapshot = self.store.latest_snapshot(name, at_most=seq) if seq else None
        first = next(iter(self.store.events(name, after_seq=0, limit=1)), None)
        if snapshot is not None and first is not None and first.seq > snapshot.seq + 1:
            # Pruned past it (rows a fill had yet to store, say): folding from it met the
            # gap on every request; it is as unusable as no snapshot at all.
            snapshot = None
        cause: StateVersionError | None = None
        if snapshot is not None:
            try:
                return CurriculumEngine.from_bytes(spec, snapshot.state), snapshot.seq
            except StateVersionError as exc:
                cause = exc
        if first is None or first.seq == 1:
            if cause is not None and snapshot is not None:
                _log.warning("curriculum %r: snapshot at seq %d not readable (%s); the "
                             "history replays the event log from its first event", name,
                             snapshot.seq, cause)
            return CurriculumEngine(spec), 0
        newest = (None if head_seq is None
                  else self.store.latest_snapshot(name, at_most=head_seq))
        if cause is None and newest is not None and newest.seq > seq:
            try:
                return CurriculumEngine.from_bytes(spec, newest.state), newest.seq
            except StateVersionError as exc:
                snapshot, cause = newest, exc
        if cause is not None and snapshot is not None:
            raise _unreplayable(name, snapshot.seq, cause, 0) from cause
        raise _Gap(f"event log of {name!r} starts at seq {first.seq} and no snapshot "
                   f"continues the history after seq {seq}")

    def _extend(self, name: str, trace: _Trace, head_seq: int) -> None:
        """Fold the reports committed after the trace (caller holds its lock)."""
        if trace.engine_seq < head_seq:
            self._fold(name, trace, self.store.events(name, after_seq=trace.engine_seq,
                                                      limit=head_seq - trace.engine_seq))

    def _fold(self, name: str, trace: _Trace, events: Iterable[EventRecord]) -> None:
        """Fold events in order, recording a row after each one beyond the rows the
        trace holds (caller holds the lock)."""
        engine = trace.engine
        assert engine is not None
        for event in events:
            if event.seq != trace.engine_seq + 1:
                raise _Gap(f"event log of {name!r} has a gap after seq {trace.engine_seq}")
            engine.apply(decode_report(event.payload))
            self.folds += 1
            trace.engine_seq = event.seq
            if event.seq > trace.seq:
                trace.seq = event.seq
                trace.columns.append(event.seq, event.step, event.created_at.timestamp(),
                                     engine.progress())


class _Gap(RuntimeError):
    """The events after a trace were pruned (a snapshot covers them)."""


def _unreplayable(name: str, seq: int, cause: StateVersionError,
                  replayed_to: int) -> StateVersionError:
    return StateVersionError(
        f"{cause} and the event log of {name!r} no longer starts at seq 1 (pruned), so its "
        "history cannot be rebuilt by replay",
        {**cause.details, "replayed_to": replayed_to, "snapshot_seq": seq})


def auto_every(rows: int, limit: int = MAX_POINTS) -> int:
    """The smallest `every` that keeps a range of `rows` reports within `limit` rows."""
    return max(1, math.ceil(rows / limit))


def fitting_every(first: int, last: int, limit: int = MAX_POINTS) -> int:
    """The smallest `every` whose rows over seqs first..last (its multiples, plus `last`)
    are at most `limit`. Counted exactly: `auto_every(last - first)` left one row too
    many (1001 rows for seqs 0..1000, or 0..100 000 at every 100), and the last row is
    added when it is no multiple. From `auto_every` of the rows, a lower bound, up."""
    every = auto_every(last - first + 1, limit)
    while last // every - -(-first // every) + 1 + (last % every != 0) > limit:
        every += 1
    return every


def _select(name: str, trace: _Trace, head_seq: int, upto: int, every: int | None,
            since: int) -> CurriculumHistory:
    """Rows with since <= seq <= upto at multiples of `every`, plus the row at `upto`."""
    columns = trace.columns
    assert isinstance(columns, _Columns)
    n = int(np.searchsorted(columns.seq[:columns.size], upto, side="right"))
    seq = columns.seq[:n]
    start = int(np.searchsorted(seq, since, side="left"))
    first_seq = int(seq[start]) if start < n else head_seq
    step_every = every if every is not None else fitting_every(min(first_seq, head_seq),
                                                               head_seq)
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
