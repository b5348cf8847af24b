"""A curriculum as JSON lines: export, and an import that is all or nothing.

An export holds what rebuilds a curriculum exactly — its spec, its runs and its reports
in log order (the state is a fold of them) — one JSON object per line:

    {"type": "curriculum", "format": 1, "seq": S, "spec": {...}}           first
    {"type": "run", "run_id": ..., "metadata": {...},
     "created_at": ..., "last_heartbeat": ...}                              each run
    {"type": "report", "seq": n, "idempotency_key": k, "report": {...}}     n = 1..S

Each report is in the API's flat form (`rollout_indices`, `group_ids`, `rewards`, ...),
so it can also be posted as it is. Issued batches and snapshots are not exported: the
import folds the reports again and writes its own snapshots and history rows.

An import is one transaction: the curriculum (created, unless it is merged into), its
runs and every report commit together or, at the first bad line, not at all. It refuses
to touch an existing curriculum unless told to merge; a merge appends, after the
curriculum's head and in export order, the reports it does not hold yet (by idempotency
key, and by run and step as the service counts a step once), and counts the others as
already present (the same key or step with other content fails the whole import).
The CLI and `POST /v1/imports` both call `import_curriculum`; the CLI and
`GET /v1/curricula/{name}/export` both call `export_curriculum`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from paceline_server.app.codec import decode_report, encode_report, holds, same_report
from paceline_server.app.engines import CachedEngine
from paceline_server.app.group_commit import OnFold
from paceline_server.app.history import checkpoint_due, pending_rows, store_imported_rows
from paceline_server.app.reports import parse_report
from paceline_server.app.service import PacelineService, effective_spec, spec_differences
from paceline_server.domain.errors import (
    Conflict,
    CurriculumExists,
    CurriculumNotFound,
    IdempotencyConflict,
    InvalidRequest,
    MalformedBody,
    PacelineError,
    ReportConflict,
    RunNotFound,
)
from paceline_server.domain.history import pack_point
from paceline_server.domain.report import Report
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.domain.validation import (
    MAX_INT,
    MAX_KEY,
    MAX_RUN_ID,
    check_document,
    check_identifier,
    check_int,
)
from paceline_server.engine import CurriculumEngine
from paceline_server.store.base import (
    CurriculumImporter,
    CurriculumRecord,
    EventRecord,
    RunRecord,
    Store,
)

#: The export format written here; an import refuses a newer one rather than guess.
FORMAT = 1
#: Runs read per query while exporting (a run's metadata may reach 64 KiB).
RUN_PAGE = 500
#: What an export is sent as over HTTP (one JSON document per line).
MEDIA_TYPE = "application/x-ndjson"
#: A parsed line of an export: (line number, object).
Line = tuple[int, dict[str, Any]]


# ---------------------------------------------------------------------------- export
def export_curriculum(service: PacelineService, name: str) -> Iterator[bytes]:
    """The export of `name`, line by line (each ending in a newline).

    The curriculum, its first runs and the first event are read by this call, so a
    missing curriculum or a pruned log raises here, before a caller starts streaming; the
    other runs and the events are then read lazily, a page at a time (runs are listed
    after the head is read, so every exported report's run is in the export), up to the
    head read first: a curriculum's runs and log are never in memory whole."""
    store = service.store
    record = store.get_curriculum(name)
    runs = _runs(store, record, store.list_runs(name, RUN_PAGE, created_at=record.created_at))
    events = store.events(name, limit=record.head_seq)
    first = next(events, None)
    if record.head_seq and (first is None or first.seq != 1):
        start = record.head_seq + 1 if first is None else first.seq
        raise Conflict(
            f"reports 1..{start - 1} of curriculum {name!r} were pruned "
            "(PACELINE_PRUNE_EVENTS): an export would not rebuild it",
            {"curriculum": name, "first_seq": start})
    return _lines(record, runs, first, events)


def _runs(store: Store, record: CurriculumRecord,
          first: list[RunRecord]) -> Iterator[RunRecord]:
    """Every run of `record`'s curriculum, a page of `RUN_PAGE` at a time (`first` the
    first), each page after the last key read: a run merged in meanwhile with an earlier
    creation time shifts no page (an offset would repeat or skip one, and an import then
    refuses the file). Conflict when the name is another curriculum's by then."""
    page = first
    while True:
        yield from page
        if len(page) < RUN_PAGE:
            return
        page = store.list_runs(record.name, RUN_PAGE, after=page[-1].key,
                               created_at=record.created_at)


def _lines(record: CurriculumRecord, runs: Iterable[RunRecord], first: EventRecord | None,
           events: Iterator[EventRecord]) -> Iterator[bytes]:
    yield _dump({"type": "curriculum", "format": FORMAT, "seq": record.head_seq,
                 "spec": record.spec})
    for run in runs:
        yield _dump({"type": "run", "run_id": run.run_id, "metadata": run.metadata,
                     "created_at": run.created_at.isoformat(),
                     "last_heartbeat": run.last_heartbeat.isoformat()})
    if first is None:
        return
    yield _event_line(first)
    seq = first.seq
    for event in events:
        if event.seq != seq + 1:
            break
        yield _event_line(event)
        seq = event.seq
    if seq != record.head_seq:
        # Read a page at a time: events pruned meanwhile (another request's snapshot
        # was due) or the curriculum deleted leave a gap or a short tail, and a file
        # cut there would claim to be the whole log (no import takes it).
        raise Conflict(
            f"the event log of curriculum {record.name!r} changed while it was exported "
            f"(reports after seq {seq} were pruned or deleted); export it again",
            {"curriculum": record.name, "exported_to": seq, "head_seq": record.head_seq})


def _event_line(event: EventRecord) -> bytes:
    return _dump({"type": event.kind, "seq": event.seq,
                  "idempotency_key": event.idempotency_key,
                  "created_at": event.created_at.isoformat(),
                  "report": report_to_json(decode_report(event.payload))})


def _dump(item: Mapping[str, Any]) -> bytes:
    return orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def report_to_json(report: Report) -> dict[str, Any]:
    """A report in the API's flat form (numpy arrays, which `orjson` writes as lists)."""
    data: dict[str, Any] = {
        "run_id": report.run_id, "step": report.step,
        "rollout_indices": np.ascontiguousarray(report.indices[report.group_of]),
        "group_ids": np.ascontiguousarray(report.group_of),
        "rewards": np.ascontiguousarray(report.rewards),
    }
    for field in ("advantages", "grad_products", "eval_objectives"):
        value = getattr(report, field)
        if value is not None:
            data[field] = np.ascontiguousarray(value)
    return data


# ---------------------------------------------------------------------------- reading
def read_lines(lines: Iterable[bytes | str]) -> Iterator[Line]:
    """(line number, object) of each non-blank line. Parsed strictly (`orjson`): NaN,
    infinities and lone surrogates, which no JSON answer could carry later, are refused
    here with the rest of malformed JSON."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"line {number}: not valid JSON: {exc}",
                                {"line": number}) from None
        if not isinstance(item, dict):
            raise MalformedBody(f"line {number}: each line of an export is a JSON object",
                                {"line": number})
        yield number, item


@dataclass(frozen=True)
class ExportHeader:
    """The first line of an export: the spec (validated) and the head it announces."""

    spec: CurriculumSpec
    seq: int | None  # None in exports of the first release, which did not write it


def read_header(items: Iterator[Line],
                rename: str | None = None) -> ExportHeader:
    """Consume the curriculum line (the first) and validate its spec, renamed if asked."""
    found = next(items, None)
    if found is None:
        raise InvalidRequest("the export is empty", {"line": 1})
    line, item = found
    with _at(line):
        if item.get("type") != "curriculum":
            raise InvalidRequest("an export starts with its curriculum line "
                                 '({"type": "curriculum", ...})')
        version = item.get("format", FORMAT)
        if version != FORMAT:
            raise InvalidRequest(f"export format {version!r} is not supported (this "
                                 f"release reads format {FORMAT})", {"field": "format"})
        spec = item.get("spec")
        if not isinstance(spec, dict):
            raise InvalidRequest("the curriculum line needs its spec", {"field": "spec"})
        if rename is not None:
            spec = {**spec, "name": rename}
        seq = item.get("seq")
        if seq is not None:
            seq = check_int(seq, "seq", InvalidRequest, maximum=MAX_INT)
        return ExportHeader(CurriculumSpec.from_dict(spec), seq)


def read_reports(items: Iterator[Line], header: ExportHeader,
                 ) -> Iterator[tuple[int, int, dict[str, Any], Report]]:
    """(line, seq, line object, parsed report) of the report lines, checking that they
    are the log's reports 1, 2, ... in order and, at the end, that none is missing. Run
    lines are skipped (a caller that needs them reads them with `read_runs`)."""
    expected = 1
    for line, item in items:
        with _at(line):
            kind = item.get("type")
            if kind == "run":
                continue
            if kind != "report":
                raise InvalidRequest(f"unknown line type {kind!r} (curriculum, run or "
                                     "report)", {"field": "type"})
            seq = check_int(item.get("seq"), "seq", InvalidRequest, minimum=1,
                            maximum=MAX_INT)
            if seq != expected:
                raise InvalidRequest(
                    f"report seq {seq} where {expected} was due: an export holds the "
                    "log's reports 1, 2, ... in order (reports missing or out of order "
                    "cannot rebuild the curriculum)", {"field": "seq", "expected": expected})
            body = item.get("report")
            if not isinstance(body, dict):
                raise InvalidRequest("a report line needs its report", {"field": "report"})
            report = parse_report(body, header.spec)
            check_int(report.step, "step", InvalidRequest, maximum=MAX_INT)
        yield line, seq, item, report
        expected += 1
    if header.seq is not None and expected - 1 != header.seq:
        raise InvalidRequest(
            f"the export announces {header.seq} reports but holds {expected - 1}: it is "
            "truncated or was edited", {"expected": header.seq, "found": expected - 1})


# ---------------------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportResult:
    name: str
    created: bool  # False: merged into an existing curriculum
    seq: int  # the curriculum's head after the import
    reports_added: int
    reports_present: int  # already in the curriculum (same idempotency key and content)
    runs_added: int
    runs_present: int


@dataclass(frozen=True)
class _Run:
    run_id: str
    metadata: dict[str, Any]
    created_at: datetime | None
    last_heartbeat: datetime | None


@dataclass(frozen=True)
class _Report:
    line: int
    key: str
    run_id: str
    step: int
    payload: bytes  # the encoded report: compact, decoded again when folded
    #: when the original service stored it (None in exports before report times)
    created_at: datetime | None = None


@dataclass(frozen=True)
class ExportContents:
    """An export read and validated, ready to import (`read_export`)."""

    engine: CurriculumEngine  # a fresh engine of the (renamed) spec
    runs: tuple[_Run, ...]
    reports: tuple[_Report, ...]


def read_export(items: Iterable[Line], name: str | None = None,
                admit: Callable[[CurriculumSpec], None] | None = None) -> ExportContents:
    """Read and validate every line of an export (the lines of `read_lines`), renamed
    to `name` if given, without touching any database: a broken file is refused before
    anything is opened. `admit` (a service's limits) judges the spec before its engine
    is built."""
    lines = iter(items)
    header = read_header(lines, name)
    if admit is not None:
        admit(header.spec)
    engine = CurriculumEngine(header.spec)  # validates the spec as a create does
    runs: dict[str, _Run] = {}
    reports: list[_Report] = []

    def on_run(line: int, item: dict[str, Any]) -> None:
        with _at(line):
            run = _read_run(item)
            if run.run_id in runs:
                raise InvalidRequest(f"run {run.run_id!r} appears twice",
                                     {"field": "run_id"})
            runs[run.run_id] = run

    for line, seq, item, report in read_reports(_runs_aside(lines, on_run), header):
        with _at(line):
            key = item.get("idempotency_key")
            key = f"import:{seq}" if key is None else check_identifier(
                key, "idempotency_key", InvalidRequest, max_length=MAX_KEY)
            reports.append(_Report(line, key, report.run_id, report.step,
                                   encode_report(report),
                                   _timestamp(item.get("created_at"), "created_at")))
    return ExportContents(engine, tuple(runs.values()), tuple(reports))


def import_curriculum(service: PacelineService, export: ExportContents | Iterable[Line], *,
                      name: str | None = None, merge: bool = False) -> ImportResult:
    """Import an export (`read_export`'s result, or the lines of `read_lines`, read
    here under `name` if given).

    One transaction creates the curriculum (or, with `merge`, locks the existing one of
    an equal spec), attaches the runs it lacks and appends the reports it lacks, with
    snapshots as the service writes them. A new curriculum's reports are folded before
    that transaction, a merge's inside it (on the curriculum's state). Any error leaves
    the database as it was. Without `merge` an existing curriculum of that name is
    refused (CURRICULUM_EXISTS). `export.engine` is folded: an `ExportContents` is
    imported once."""
    if not isinstance(export, ExportContents):
        export = read_export(export, name, service.admit)
    else:
        service.admit(export.engine.spec)
    engine, reports = export.engine, export.reports
    spec = engine.spec
    target = spec.name
    existing = _existing(service, target)
    if existing is not None:
        if not merge:
            raise CurriculumExists(
                f"curriculum {target!r} exists: an import adds to an existing curriculum "
                "only when told to merge (CLI --merge, API ?merge=true); nothing was "
                "imported", {"curriculum": target, "merge": False})
        differing = spec_differences(effective_spec(existing.spec),
                                     effective_spec(spec.to_dict()))
        if differing:
            raise CurriculumExists(
                f"curriculum {target!r} exists with a different spec "
                f"({', '.join(differing)}): the export cannot be merged into it; nothing "
                "was imported", {"curriculum": target, "same_spec": False,
                                 "differing": differing})
    known = {r.run_id for r in export.runs} | ({r.run_id for r in service.store.list_runs(target)}
                         if existing is not None else set())
    for entry in reports:
        if entry.run_id not in known:
            raise RunNotFound(f"line {entry.line}: run {entry.run_id!r} of this report is "
                              "neither in the export nor in the curriculum",
                              {"line": entry.line, "run_id": entry.run_id})
    every = service.settings.snapshot_every
    now = datetime.now(UTC)
    if existing is None:
        # Folded before the transaction, which then only inserts: on SQLite it holds
        # the database's write lock, so every other curriculum's writers wait on it.
        fold = _fold_new(engine, reports, every, service.settings.snapshot_keep)
        with service.store.importer(target, spec.to_dict()) as writer:
            runs_added, runs_present = _add_runs(writer, export.runs, now)
            first = 1  # of the history rows not yet stored as a checkpoint chunk
            most = pending_rows(spec)  # the chunks the report path would store
            for item, row in zip(fold.new, fold.rows, strict=True):
                # The original log's times, so that the history's time axis (and
                # the dashboard's charts) reads as it did where it was exported.
                seq = writer.append("report", item.run_id, item.step, item.key,
                                    item.payload, checked=True, progress=row,
                                    created_at=item.created_at or now)
                if checkpoint_due(seq, seq - first + 1, every, most):
                    _store_rows(writer, spec, fold, first, seq)
                    first = seq + 1
            _store_rows(writer, spec, fold, first, writer.head_seq)
            for seq, state in fold.snapshots:
                writer.put_snapshot(seq, state)
            head = writer.head_seq
        return ImportResult(target, True, head, len(fold.new), fold.present, runs_added,
                            runs_present)
    cached = service.engines.entry(existing)
    with cached.lock:
        try:
            with service.store.importer(target) as writer:
                if writer.created_at != cached.created_at:
                    raise Conflict(f"curriculum {target!r} was deleted and created again "
                                   "during the import; nothing was imported",
                                   {"curriculum": target})
                service.engines.catch_up(cached, target, writer.head_seq)
                counts = _merge(writer, cached, export.runs, reports, every, now,
                                service.histories.record)
                head = writer.head_seq
        except BaseException:
            service.engines.invalidate(cached)  # it may hold folds that were rolled back
            raise
        cached.seq = head
    return ImportResult(target, False, head, *counts)


@dataclass(frozen=True)
class _NewLog:
    """A new curriculum's log, folded before its transaction."""

    new: list[_Report]  # to append, in order (seq = position + 1)
    rows: list[bytes]  # each one's history row (`pack_point` after its fold)
    present: int  # lines repeating an earlier line's key and content
    snapshots: list[tuple[int, bytes]]  # the newest `snapshot_keep` due, by seq


def _fold_new(engine: CurriculumEngine, reports: Sequence[_Report], snapshot_every: int,
              snapshot_keep: int) -> _NewLog:
    """Fold an export into a fresh engine. The log is taken as it is: one written before
    steps were folded once may hold a step twice, and it is rebuilt exactly; only a key
    repeated within the file is a repeat (same content) or a conflict. Of the snapshots
    due every `snapshot_every` reports only the newest `snapshot_keep` are serialised
    (the store would drop the others): the count of new reports is the count of
    distinct keys."""
    seen: dict[str, _Report] = {}
    new: list[_Report] = []
    rows: list[bytes] = []
    present = 0
    snapshots: list[tuple[int, bytes]] = []
    total = len({item.key for item in reports})
    last = total - total % snapshot_every
    kept = {last - i * snapshot_every for i in range(snapshot_keep)
            if last - i * snapshot_every > 0}
    for item in reports:
        earlier = seen.get(item.key)
        if earlier is not None:
            if earlier.payload != item.payload and not same_report(
                    earlier.payload, decode_report(item.payload)):
                raise IdempotencyConflict(
                    f"line {item.line}: idempotency key {item.key!r} is held by a different "
                    f"report (line {earlier.line}); nothing was imported",
                    {"line": item.line, "idempotency_key": item.key})
            present += 1
            continue
        seen[item.key] = item
        with _at(item.line):
            engine.apply(decode_report(item.payload))
        new.append(item)
        rows.append(pack_point(engine.progress()))
        if len(new) in kept:
            snapshots.append((len(new), engine.to_bytes()))
    return _NewLog(new, rows, present, snapshots)


def _store_rows(writer: CurriculumImporter, spec: CurriculumSpec, fold: _NewLog,
                first: int, last: int) -> None:
    """Store rows first..last of a new curriculum's import as a checkpoint chunk."""
    store_imported_rows(writer, spec, first, [item.step for item in fold.new[first - 1:last]],
                        fold.rows[first - 1:last])


def _add_runs(writer: CurriculumImporter, runs: Iterable[_Run],
              now: datetime) -> tuple[int, int]:
    """(runs added, runs already present)."""
    added = present = 0
    for run in runs:
        if writer.add_run(run.run_id, run.metadata, run.created_at or now,
                          run.last_heartbeat or now):
            added += 1
        else:
            present += 1
    return added, present


def _merge(writer: CurriculumImporter, cached: CachedEngine, runs: Iterable[_Run],
           reports: Iterable[_Report], snapshot_every: int, now: datetime,
           record: OnFold) -> tuple[int, int, int, int]:
    """Attach the runs and fold and append the reports an existing curriculum lacks
    (inside the import's transaction; `cached.engine` is at the writer's head); (reports
    added, present, runs added, present). A report is present when its idempotency key
    is, or its (run, step) is, as the service answers a repeated step. Each appended
    report's history row goes through `record`, as on the report path."""
    engine = cached.engine
    runs_added, runs_present = _add_runs(writer, runs, now)
    added = present = 0
    for item in reports:
        earlier = writer.find_by_key(item.key)
        if earlier is not None:
            if not _same(earlier, item):
                raise IdempotencyConflict(
                    f"line {item.line}: idempotency key {item.key!r} is held by a different "
                    f"report (seq {earlier.seq}); nothing was imported",
                    {"line": item.line, "idempotency_key": item.key, "seq": earlier.seq})
            present += 1
            continue
        earlier = writer.find_report(item.run_id, item.step)
        if earlier is not None:  # a step is folded once, as the service does
            if not _same(earlier, item):
                raise ReportConflict(
                    f"line {item.line}: step {item.step} of run {item.run_id!r} is already "
                    f"in the curriculum (seq {earlier.seq}) with different content; nothing "
                    "was imported", {"line": item.line, "run_id": item.run_id,
                                     "step": item.step, "seq": earlier.seq})
            present += 1
            continue
        with _at(item.line):
            engine.apply(decode_report(item.payload))
        point = engine.progress()
        seq = writer.append("report", item.run_id, item.step, item.key, item.payload,
                            checked=True, progress=pack_point(point),
                            created_at=item.created_at or now)
        record(writer, cached, seq, item.step, snapshot_every, point)
        if seq % snapshot_every == 0:
            writer.put_snapshot(seq, engine.snapshot_pieces())
        added += 1
    return added, present, runs_added, runs_present


def _same(earlier: EventRecord, item: _Report) -> bool:
    """Whether a stored report (or what pruning left of it) holds the item's."""
    return holds(earlier, item.payload, decode_report(item.payload))


def _runs_aside(items: Iterator[Line],
                on_run: Callable[[int, dict[str, Any]], None]) -> Iterator[Line]:
    """`items`, with each run line handed to `on_run(line, item)` on the way."""
    for line, item in items:
        if item.get("type") == "run":
            on_run(line, item)
        yield line, item


def _read_run(item: Mapping[str, Any]) -> _Run:
    run_id = check_identifier(item.get("run_id"), "run_id", InvalidRequest,
                              max_length=MAX_RUN_ID)
    metadata = item.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise InvalidRequest("run metadata must be a JSON object", {"field": "metadata"})
    check_document(metadata, "metadata", InvalidRequest)
    return _Run(run_id, metadata, _timestamp(item.get("created_at"), "created_at"),
                _timestamp(item.get("last_heartbeat"), "last_heartbeat"))


def _timestamp(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value) if isinstance(value, str) else None
        # In UTC, as every backend stores it: a time whose UTC form leaves years
        # 1..9999 ("9999-12-31T23:59:59-14:00") is refused here, not by the driver.
        stamp = None if stamp is None or stamp.tzinfo is None else stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        stamp = None
    if stamp is None:
        raise InvalidRequest(f"{what} must be an ISO 8601 time with its UTC offset, within "
                             "years 1 to 9999 in UTC", {"field": what})
    return stamp


def _existing(service: PacelineService, name: str) -> CurriculumRecord | None:
    try:
        return service.store.get_curriculum(name)
    except CurriculumNotFound:
        return None


@contextmanager
def _at(line: int) -> Iterator[None]:
    """Prefix the message of a Paceline error raised in the block with its line number
    (same class and code, `line` added to the details)."""
    try:
        yield
    except PacelineError as exc:
        if "line" in exc.details:
            raise
        raise type(exc)(f"line {line}: {exc.message}", {**exc.details, "line": line}) \
            from exc
