"""Export and import (app/transfer.py) on SQLite and PostgreSQL: an import is one
transaction (a file broken anywhere leaves nothing), refuses an existing curriculum
unless merging, and says how much of a merge was new."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli_support import populated
from paceline_server.app import transfer
from paceline_server.app.service import PacelineService
from paceline_server.app.transfer import (
    export_curriculum,
    import_curriculum,
    read_export,
    read_lines,
)
from paceline_server.domain.errors import (
    Conflict,
    CurriculumExists,
    CurriculumNotFound,
    IdempotencyConflict,
    InvalidReport,
    InvalidRequest,
    MalformedBody,
    PacelineError,
    ReportConflict,
    RunNotFound,
)
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC, fresh_pg_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'paceline.db'}"
    else:
        with fresh_pg_schema() as pg_url:
            yield pg_url


def service_on(url: str) -> PacelineService:
    return PacelineService(open_store(url, auto_migrate=True),
                           Settings(database_url=url, snapshot_every=5))


def export_of(service: PacelineService, name: str = "math") -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in export_curriculum(service, name)]


def load(service: PacelineService, lines: list[dict[str, Any]], **options: Any) -> Any:
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    return import_curriculum(service, read_lines(data.splitlines()), **options)


def fingerprint(service: PacelineService) -> tuple[Any, ...]:
    """Everything an import could change, for every curriculum."""
    out: list[Any] = []
    for record in service.list_curricula():
        out.append((record.name, record.head_seq, record.spec, export_of(service, record.name),
                    service.store.latest_snapshot(record.name)))
    return tuple(out)


def test_round_trip_rebuilds_the_state_with_snapshots(url: str, tmp_path: Path) -> None:
    source = populated(f"sqlite:///{tmp_path / 'source.db'}")
    lines = export_of(source)
    target = service_on(url)
    result = load(target, lines, name="copy")
    assert (result.name, result.created, result.seq) == ("copy", True, 12)
    assert (result.reports_added, result.reports_present) == (12, 0)
    assert (result.runs_added, result.runs_present) == (1, 0)
    # Snapshots are written as the service writes them (every 5), so loading the copy
    # replays a short tail, and the copy folds to the same state.
    assert target.store.latest_snapshot("copy").seq == 10
    assert target.state("copy").distributions == source.state("math").distributions
    # The log itself is copied bit for bit: same payloads, keys, runs and steps in order.
    def log(service: PacelineService, name: str) -> list[tuple[Any, ...]]:
        return [(e.seq, e.kind, e.run_id, e.step, e.idempotency_key, e.payload)
                for e in service.store.events(name)]

    assert log(target, "copy") == log(source, "math")
    # Runs keep their metadata and times.
    (run,) = target.store.list_runs("copy")
    (original,) = source.store.list_runs("math")
    assert (run.run_id, run.metadata, run.created_at, run.last_heartbeat) == (
        original.run_id, original.metadata, original.created_at, original.last_heartbeat)
    # The copy can go on: the next report is seq 13.
    populated(url, reports=1, start=12, spec={**SPEC, "name": "copy"}, service=target)
    assert target.get_curriculum("copy").head_seq == 13


def test_an_existing_curriculum_is_refused_unless_merging(url: str) -> None:
    service = populated(url, reports=4)
    lines = export_of(service)
    before = fingerprint(service)
    with pytest.raises(CurriculumExists, match="only when told to merge"):
        load(service, lines)
    assert fingerprint(service) == before
    other_spec = [{**lines[0], "spec": {**lines[0]["spec"], "seed": 99}}, *lines[1:]]
    with pytest.raises(CurriculumExists, match="different spec"):
        load(service, other_spec, merge=True)
    assert fingerprint(service) == before
    same = load(service, lines, merge=True)
    assert (same.created, same.seq, same.reports_added, same.reports_present) == (
        False, 4, 0, 4)
    assert (same.runs_added, same.runs_present) == (0, 1)
    assert fingerprint(service) == before


def test_merge_appends_only_what_is_missing(url: str, tmp_path: Path) -> None:
    source = populated(f"sqlite:///{tmp_path / 'source.db'}", reports=6)
    early = export_of(source)
    populated("", reports=6, start=6, service=source)
    late = export_of(source)
    target = service_on(url)
    assert load(target, early).reports_added == 6
    target.state("math")  # the engine is cached: the merge must keep it current
    result = load(target, late, merge=True)
    assert (result.reports_added, result.reports_present, result.seq) == (6, 6, 12)
    assert target.state("math").distributions == source.state("math").distributions
    assert export_of(target)[2:] == late[2:]


def test_a_step_reported_under_another_key_is_present_when_merging(url: str) -> None:
    service = populated(url, reports=3)
    lines = export_of(service)
    rekeyed = [*lines[:2], *({**x, "idempotency_key": f"other-{x['seq']}"}
                             for x in lines[2:])]
    result = load(service, rekeyed, merge=True)
    assert (result.reports_added, result.reports_present) == (0, 3)
    changed = [dict(x) for x in rekeyed]
    changed[3] = {**changed[3], "report": {**changed[3]["report"],
                                           "rewards": [[0.0, 0.0]] * len(
                                               changed[3]["report"]["rewards"])}}
    before = fingerprint(service)
    with pytest.raises(ReportConflict, match="line 4: step 1 of run 'run-1'"):
        load(service, changed, merge=True)
    assert fingerprint(service) == before


def broken_exports(lines: list[dict[str, Any]]) -> list[tuple[str, bytes, type[PacelineError],
                                                              str]]:
    """(case, file, error, message start) for files broken at one line past the middle."""
    def data(items: list[Any]) -> bytes:
        return b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n"
                        for x in items)

    middle = len(lines) // 2 + 1  # a report line
    line = middle + 1
    report = lines[middle]
    bad_report = {**report, "report": {**report["report"], "rollout_indices": [10_000] * len(
        report["report"]["rollout_indices"])}}
    return [
        ("cut-mid-line", data(lines[:middle]) + orjson.dumps(report)[:50] + b"\n",
         MalformedBody, f"line {line}: not valid JSON"),
        ("truncated", data(lines[:middle]), InvalidRequest, "the export announces"),
        ("bad-report", data([*lines[:middle], bad_report, *lines[middle + 1:]]),
         InvalidReport, f"line {line}: "),
        ("seq-gap", data([*lines[:middle], *lines[middle + 1:]]), InvalidRequest,
         f"line {line}: report seq"),
        ("unknown-run", data([*lines[:middle], {**report, "report": {
            **report["report"], "run_id": "ghost"}}, *lines[middle + 1:]]),
         RunNotFound, f"line {line}: run 'ghost'"),
        ("nan", data(lines[:middle]) + orjson.dumps(report).replace(
            b'"rewards":[[', b'"rewards":[[NaN,', 1)
         + b"\n" + data(lines[middle + 1:]), MalformedBody, f"line {line}: not valid JSON"),
        ("lone-surrogate", data([*lines[:1], lines[1]]).replace(b'"run-1"', b'"\\ud800"', 1)
         + data(lines[2:]), MalformedBody, "line 2: not valid JSON"),
        ("duplicate-key-with-other-content", data([*lines[:middle], {
            **report, "idempotency_key": lines[2]["idempotency_key"]},
            *lines[middle + 1:]]), IdempotencyConflict, f"line {line}: idempotency key"),
        ("not-an-object", data([*lines[:middle]]) + b"[1, 2]\n", MalformedBody,
         f"line {line}: each line"),
        ("no-header", data(lines[1:]), InvalidRequest, "line 1: an export starts"),
        ("bad-metadata", data([lines[0], {**lines[1], "metadata": {"x": "a\x00b"}},
                               *lines[2:]]), InvalidRequest, "line 2: metadata"),
        # NUL, which PostgreSQL cannot store, in a run id and an idempotency key
        ("nul-run-id", data([lines[0], {**lines[1], "run_id": "run\x00-1"}, *lines[2:]]),
         InvalidRequest, "line 2: run_id"),
        ("nul-key", data([*lines[:middle], {**report, "idempotency_key": "k\x00"},
                          *lines[middle + 1:]]), InvalidRequest, f"line {line}: "
         "idempotency_key"),
    ]


def test_a_file_broken_half_way_imports_nothing(url: str, tmp_path: Path) -> None:
    """Each broken file, into a new curriculum and merged into an existing one: the error
    names the line, and the database is as it was (no curriculum, run, event or snapshot
    created; the existing curriculum, its cached engine and its state unchanged)."""
    source = populated(f"sqlite:///{tmp_path / 'source.db'}", reports=8)
    lines = export_of(source)
    assert lines[0]["seq"] == 8 and len(lines) == 10
    target = service_on(url)
    partial = lines[:5]  # the first 3 reports: a merge would have 5 more to add
    partial[0] = {**partial[0], "seq": 3}
    load(target, partial)
    state = target.state("math")
    before = fingerprint(target)
    for case, data, error, message in broken_exports(lines):
        for options in ({"name": "fresh"}, {"merge": True}):
            with pytest.raises(error) as raised:
                import_curriculum(target, read_lines(data.splitlines()), **options)
            assert raised.value.message.startswith(message), (case, raised.value.message)
            assert fingerprint(target) == before, case
            assert target.state("math") == state, case
            with pytest.raises(CurriculumNotFound):
                target.get_curriculum("fresh")


def test_a_failure_inside_the_transaction_rolls_everything_back(url: str,
                                                               tmp_path: Path) -> None:
    """The last report conflicts with one already stored, after the others were appended
    and a snapshot written in the same transaction: nothing of it stays."""
    source = populated(f"sqlite:///{tmp_path / 'source.db'}", reports=8)
    lines = export_of(source)
    target = service_on(url)
    partial = [{**lines[0], "seq": 1}, lines[1], lines[2]]
    load(target, partial)
    target.state("math")
    before = fingerprint(target)
    last = lines[-1]
    clash = {**last, "idempotency_key": lines[2]["idempotency_key"]}
    with pytest.raises(IdempotencyConflict, match="line 10: "):
        load(target, [*lines[:-1], clash], merge=True)
    assert fingerprint(target) == before
    assert target.get_curriculum("math").head_seq == 1
    assert target.store.latest_snapshot("math") is None  # the one at seq 5 was rolled back
    # The cached engine was not left ahead of the log: the next merge gets it right.
    assert load(target, lines, merge=True).reports_added == 7
    assert target.state("math").distributions == source.state("math").distributions


def test_read_export_touches_no_database() -> None:
    with pytest.raises(InvalidRequest, match="the export is empty"):
        read_export(read_lines([b"", b"  "]))
    header = {"type": "curriculum", "format": 2, "spec": SPEC}
    with pytest.raises(InvalidRequest, match="format 2 is not supported"):
        read_export(read_lines([orjson.dumps(header)]))
    contents = read_export(read_lines([orjson.dumps({**header, "format": 1})]), "renamed")
    assert contents.engine.spec.name == "renamed" and contents.reports == ()


def test_a_curriculum_without_reports_round_trips(url: str) -> None:
    service = service_on(url)
    service.create_curriculum(SPEC)
    service.attach_run("math", {"note": "idle"}, "run-1")
    lines = export_of(service)
    assert [x["type"] for x in lines] == ["curriculum", "run"] and lines[0]["seq"] == 0
    result = load(service, lines, name="empty-copy")
    assert (result.created, result.seq, result.reports_added, result.runs_added) == (
        True, 0, 0, 1)
    assert service.store.get_run("empty-copy", "run-1").metadata == {"note": "idle"}


def test_a_new_curriculum_is_rolled_back_whole(url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The database fails at the last write of a new curriculum's transaction (its
    snapshot, after the curriculum row, the run and every report): none of it stays."""
    from paceline_server.store import sql

    lines = export_of(populated(f"sqlite:///{tmp_path / 'source.db'}", reports=7))
    target = service_on(url)

    def failing(self: object, seq: int, state: bytes) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sql._SqlImporter, "put_snapshot", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        load(target, lines)
    with pytest.raises(CurriculumNotFound):
        target.get_curriculum("math")
    monkeypatch.undo()
    assert load(target, lines).reports_added == 7  # nothing left behind in the way
    assert target.store.latest_snapshot("math").seq == 5


@pytest.mark.parametrize(("reports", "expected"), [(12, [5, 10]), (15, [10, 15]), (4, [])])
def test_a_new_import_serialises_only_the_snapshots_it_keeps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reports: int,
        expected: list[int]) -> None:
    """snapshot_every=5 and the default snapshot_keep=2: the store keeps the newest two
    snapshots due, so only those are serialised (one state copy each), not one every
    five reports; the kept snapshots are the service's own."""
    from sqlalchemy import text

    from paceline_server.engine import CurriculumEngine
    from paceline_server.store.sql import SqlStore

    lines = export_of(populated(f"sqlite:///{tmp_path / 'source.db'}", reports=reports))
    target = service_on(f"sqlite:///{tmp_path / 'target.db'}")
    serialised: list[int] = []
    original = CurriculumEngine.to_bytes

    def counting(self: CurriculumEngine) -> bytes:
        serialised.append(self.clock)
        return original(self)

    monkeypatch.setattr(CurriculumEngine, "to_bytes", counting)
    assert load(target, lines).reports_added == reports
    assert serialised == expected
    store = target.store
    assert isinstance(store, SqlStore)
    with store.engine.connect() as conn:
        seqs = [row[0] for row in conn.execute(text("SELECT seq FROM snapshots ORDER BY seq"))]
    assert seqs == expected


@pytest.mark.parametrize("meanwhile", ["pruned", "deleted"])
def test_an_export_whose_log_changes_under_it_fails_instead_of_ending_short(
        url: str, meanwhile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The events are read a page at a time after the head: events pruned (another
    request's report was due a snapshot) or the curriculum deleted between two pages
    left a gap or a short tail in an export that said nothing (the CLI exited 0 with a
    file no import takes); the export now fails with CONFLICT where the log broke."""
    from paceline_server.domain.errors import Conflict
    from paceline_server.store import sql

    monkeypatch.setattr(sql, "EVENT_PAGE_SIZE", 2)
    service = populated(url, reports=12)
    lines = export_curriculum(service, "math")
    read = [next(lines) for _ in range(4)]  # header, run, reports 1 and 2
    assert orjson.loads(read[-1])["seq"] == 2
    if meanwhile == "pruned":
        assert service.store.prune_events("math", 10) == 10
    else:
        service.delete_curriculum("math")
    with pytest.raises(Conflict, match="changed while it was exported"):
        list(lines)


def test_a_new_import_keeps_the_reports_times(url: str, tmp_path: Path) -> None:
    """The log's times travel with the export, so the copy's history has the original's
    time axis (not every report at the moment of the import)."""
    source = populated(f"sqlite:///{tmp_path / 'source.db'}")
    lines = export_of(source)
    original = [e.created_at for e in source.store.events("math")]
    assert [datetime.fromisoformat(line["created_at"]) for line in lines
            if line["type"] == "report"] == original
    # Spread the times out as an hour-long run would have them.
    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    stamps = [start + timedelta(minutes=5 * i) for i in range(len(original))]
    reports = iter(stamps)
    for line in lines:
        if line["type"] == "report":
            line["created_at"] = next(reports).isoformat()
    target = service_on(url)
    load(target, lines, name="copy")
    assert [e.created_at for e in target.store.events("copy")] == stamps
    history = target.histories.history("copy")
    assert history.time[1:].tolist() == [s.timestamp() for s in stamps]
    # And the copy exports them again as they came.
    assert [line.get("created_at") for line in export_of(target, "copy")
            if line["type"] == "report"] == [s.isoformat() for s in stamps]


def test_reports_without_times_are_stamped_at_the_import_and_merges_keep_them(
        url: str, tmp_path: Path) -> None:
    """An export written before report times were exported imports as before (the
    import's time); a merge keeps the times the export carries, as a new import does."""
    source = populated(f"sqlite:///{tmp_path / 'source.db'}")
    lines = export_of(source)
    old = [{k: v for k, v in line.items() if k != "created_at" or line["type"] != "report"}
           for line in lines]
    target = service_on(url)
    before = datetime.now(UTC)
    load(target, old, name="copy")
    times = [e.created_at for e in target.store.events("copy")]
    assert len(times) == 12 and all(before <= t <= datetime.now(UTC) for t in times)
    # Merge the full export into a copy holding its first four reports.
    load(target, [{**lines[0], "seq": 4}, *lines[1:6]], name="part")
    load(target, lines, name="part", merge=True)
    assert [e.created_at for e in target.store.events("part")] == [
        e.created_at for e in source.store.events("math")]


@pytest.mark.parametrize("stamp", ["yesterday", "2026-01-02T03:04:05", 17,
                                   "9999-12-31T23:00:00-05:00"])
def test_a_bad_report_time_is_refused_naming_its_line(stamp: Any, tmp_path: Path) -> None:
    source = populated(f"sqlite:///{tmp_path / 'source.db'}")
    lines = export_of(source)
    lines[3] = {**lines[3], "created_at": stamp}
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    with pytest.raises(InvalidRequest, match="line 4: created_at must be an ISO 8601"):
        read_export(read_lines(data.splitlines()))


def test_runs_are_exported_a_page_at_a_time(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A curriculum's runs are read a page at a time (each may hold 64 KiB of metadata),
    and every one is exported once, in order, runs attached while the export streams
    included."""
    monkeypatch.setattr(transfer, "RUN_PAGE", 3)
    service = service_on(url)
    service.create_curriculum(SPEC)
    for i in range(7):
        service.attach_run("math", run_id=f"r{i}")
    pages: list[tuple[Any, ...]] = []
    list_runs = service.store.list_runs

    def counted(name: str, limit: int | None = None, offset: int = 0,
                after: Any = None, **options: Any) -> Any:
        pages.append((limit, None if after is None else after.run_id))
        return list_runs(name, limit, offset, after, **options)

    monkeypatch.setattr(service.store, "list_runs", counted)
    lines = export_curriculum(service, "math")
    assert pages == [(3, None)]  # the first page only, before streaming
    first = orjson.loads(next(lines))
    assert first["type"] == "curriculum"
    service.attach_run("math", run_id="late")
    runs = [orjson.loads(line)["run_id"] for line in lines]
    assert runs == [f"r{i}" for i in range(7)] + ["late"]
    assert pages == [(3, None), (3, "r2"), (3, "r5")]


def test_an_export_of_a_curriculum_recreated_while_it_streams_stops(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its later runs would be another curriculum's: the export stops with CONFLICT, as
    it does when the log changes under it, instead of mixing the two."""
    monkeypatch.setattr(transfer, "RUN_PAGE", 2)
    service = service_on(url)
    service.create_curriculum(SPEC)
    for i in range(5):
        service.attach_run("math", run_id=f"r{i}")
    lines = export_curriculum(service, "math")
    next(lines)
    service.delete_curriculum("math")
    service.create_curriculum(SPEC)
    for i in range(5):
        service.attach_run("math", run_id=f"new{i}")
    with pytest.raises(Conflict):
        list(lines)
