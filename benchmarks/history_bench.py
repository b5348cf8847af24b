"""The history endpoint on a long curriculum: what a process's first request costs (the
stored checkpoints read, plus the rows stored with the events after the last one), what
later ones cost (cached, only the new reports' rows read), what the report path pays for
the rows, in-process and over HTTP.

Builds a SQLite database with `--reports` reports of a toy trainer (dump_ucb +
hypervolume, 4 distributions, 2 objectives, batch 32 x group 4, a snapshot and a history
checkpoint every 100), written straight into the event log by the engine with the rows
the service's report path records, each report's row in its event (no service round
trips), then:
- app: `HistoryService.history` cold at a checkpoint, 1 and 99 reports after one (no
  fold in any: `folds` says), warm (default `every`: <= 1000 rows), warm with every=1,
  `since` near the head, after 10 new reports; cold 99 reports after a checkpoint when
  the events hold no rows (a log written by an older version: that tail is replayed);
  with `--replay`, cold by a replay of the whole log (what a log without checkpoints
  costs) and a check that both agree;
- report path: reports through `PacelineService.report` with and without the history's
  per-report row (`--ab-reports`, interleaved blocks of 50), and what storing the row in
  its event adds alone (`pack_point`, an append with and without the row);
- http: GET /v1/curricula/{name}/history, the first request of fresh `paceline-server
  serve` processes (`--servers`, three by default, for each of: head at a checkpoint, 1
  and 99 reports after one) and later ones;
- memory: a cold request cached (the default `PACELINE_HISTORY_CACHE_BYTES`) and one
  streamed (a budget no history fits: read in batches, only the rows returned kept):
  milliseconds, tracemalloc peak and what stays allocated after it, on the log
  above and on a wide one (`--wide` distributions, `--wide-reports` reports), and that
  both answer the same rows.
Prints one JSON object per measurement (milliseconds) and a summary line.

    python benchmarks/history_bench.py --reports 10000 [--replay]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_service import local_service
from paceline_server.api.routes import history_out
from paceline_server.app.codec import encode_report
from paceline_server.app.engines import CachedEngine
from paceline_server.app.group_commit import NextBatch
from paceline_server.app.history import HistoryService
from paceline_server.app.service import PacelineService
from paceline_server.domain import CurriculumSpec, Report
from paceline_server.domain.history import pack_point
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.base import Store

NAME = "long"
SPEC: dict[str, Any] = {
    "name": NAME, "batch_size": 32, "seed": 5,
    "layout": {"distributions": [{"name": "d0", "size": 4000}, {"name": "d1", "size": 3000},
                                 {"name": "d2", "size": 2000}, {"name": "d3", "size": 1000}]},
    "objectives": ["accuracy", {"name": "length", "direction": "minimize", "bounds": [0, 1]}],
    "sampler": "dump_ucb", "weighting": "hypervolume",
}
PASS = np.array([0.8, 0.5, 0.2, 0.01])
EDGES = np.cumsum([4000, 3000, 2000, 1000])


def build_log(store: Store, reports: int, start: int = 0, engine: CurriculumEngine | None = None,
              snapshot_every: int = 100, chunk: int = 500,
              history: HistoryService | None = None) -> CurriculumEngine:
    """Append `reports` toy reports to the curriculum's log (creating it when `start` is 0)
    in transactions of `chunk`, with snapshots as the service writes them and, given
    `history`, the rows its report path records (`HistoryService.record`, and each in
    its event's row, as `GroupCommitter._append` appends it)."""
    if start == 0:
        engine = CurriculumEngine(CurriculumSpec.from_dict(SPEC))
        store.create_curriculum(NAME, engine.spec.to_dict())
    assert engine is not None
    head = store.head(NAME)
    cached = CachedEngine(head.created_at, engine.spec, engine, head.head_seq,
                          threading.RLock())
    rng = np.random.default_rng(start)
    step = start
    while step < start + reports:
        with store.writer(NAME) as writer:
            for _ in range(min(chunk, start + reports - step)):
                report = toy_report(engine, rng, step)
                engine.apply(report)
                point = None if history is None else engine.progress()
                seq = writer.append("report", "run-0", step, f"run-0/{step}",
                                    encode_report(report), checked=True,
                                    progress=None if point is None else pack_point(point))
                if history is not None and point is not None:
                    history.record(writer, cached, seq, step, snapshot_every, point)
                if seq % snapshot_every == 0:
                    writer.put_snapshot(seq, engine.to_bytes())
                step += 1
    return engine


def toy_report(engine: CurriculumEngine, rng: np.random.Generator, step: int) -> Report:
    batch = engine.next_batch("run-0", step)
    owner = np.searchsorted(EDGES, batch.indices, side="right")
    accuracy = (rng.random((owner.size, 4)) < PASS[owner][:, None]).astype(float)
    length = rng.random((owner.size, 4)).round(2)
    return Report.dense(run_id="run-0", step=step, indices=batch.indices,
                        rewards=np.stack([accuracy, length], axis=-1),
                        layout=engine.layout, num_objectives=2)


class ChunksOnly(HistoryService):
    """The history as a log whose events hold no rows gives it (written by a version
    before `events.progress`): the chunks, then a replay of the tail."""

    def _stored_rows(self, name: str, spec: Any, columns: Any, after: int,
                     head_seq: int) -> int:
        return after


class Replayed(ChunksOnly):
    """The history as a log without checkpoints gives it: a replay from seq 0."""

    def _load_checkpoints(self, *args: Any) -> int:
        return 0


def cold_app(store: Store, repeat: int, kind: type[HistoryService] = HistoryService
             ) -> tuple[list[float], Any, int]:
    """A new service each time, so every request is cold: times, last view, folds."""
    times, view, folds = [], None, 0
    for _ in range(repeat):
        history = kind(store)
        more, view = timed(lambda h=history: h.history(NAME))  # type: ignore[misc]
        times += more
        folds += history.folds
    assert view is not None and view.complete
    return times, view, folds


def memory(store: Store, name: str, make: Callable[[], HistoryService],
           repeat: int) -> dict[str, Any]:
    """A cold request's milliseconds (a new service each time), then one more under
    tracemalloc: its peak, and what stays allocated once its answer is let go while the
    service is kept (its cache), in MB."""
    times = [timed(lambda: make().history(name))[0][0] for _ in range(repeat)]
    history = make()
    tracemalloc.start()
    try:
        view = history.history(name)
        rows = int(view.seq.size)
        peak = tracemalloc.get_traced_memory()[1]
        del view
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return {"p50_ms": round(statistics.median(times), 2), "peak_mb": round(peak / 1e6, 2),
            "held_mb": round(held / 1e6, 2), "rows": rows,
            "view": history.history(name)}


def wide_log(store: Store, distributions: int, reports: int) -> str:
    """A curriculum of `distributions` distributions (50 samples each, one objective)
    with `reports` reports, rows and checkpoints as the report path stores them."""
    spec = CurriculumSpec.from_dict({
        "name": "wide", "objectives": ["acc"], "batch_size": 32, "seed": 1,
        "layout": {"distributions": [{"name": f"d{i}", "size": 50}
                                     for i in range(distributions)]}})
    engine = CurriculumEngine(spec)
    store.create_curriculum("wide", spec.to_dict())
    head = store.head("wide")
    cached = CachedEngine(head.created_at, spec, engine, 0, threading.RLock())
    recorder = HistoryService(store)
    rng = np.random.default_rng(3)
    for first in range(0, reports, 100):
        with store.writer("wide") as writer:
            for step in range(first, min(first + 100, reports)):
                batch = engine.next_batch("run-0", step)
                rewards = (rng.random((batch.indices.size, 4, 1)) < 0.5).astype(float)
                engine.apply(Report.dense(run_id="run-0", step=step, indices=batch.indices,
                                          rewards=rewards, layout=engine.layout,
                                          num_objectives=1))
                point = engine.progress()
                seq = writer.append("report", "run-0", step, None, b"-", checked=True,
                                    progress=pack_point(point))
                recorder.record(writer, cached, seq, step, 100, point)
    return "wide"


def memory_rows(store: Store, name: str, repeat: int, label: str) -> None:
    """The `memory` case cached and streamed, and whether both answer the same rows."""
    views = {}
    for path, make in (("cached", lambda: HistoryService(store)),
                       ("streamed", lambda: HistoryService(store, max_bytes=1))):
        row = memory(store, name, make, repeat)
        views[path] = row.pop("view")
        print(json.dumps({"case": f"memory, {label}, cold, {path}", **row}), flush=True)
    a, b = views["cached"], views["streamed"]
    same = all(np.array_equal(x, y, equal_nan=True) for x, y in zip(
        [a.seq, a.step, a.time, a.reward_weights, a.reward_scale, a.hypervolume,
         *a.series.values()],
        [b.seq, b.step, b.time, b.reward_weights, b.reward_scale, b.hypervolume,
         *b.series.values()], strict=True))
    print(json.dumps({"case": f"memory, {label}: streamed equals cached", "same": same}),
          flush=True)


def cold_http(url: str, servers: int = 3) -> list[float]:
    """The first history request of `servers` freshly started servers."""
    times = []
    for _ in range(servers):
        with local_service(url) as service, httpx.Client(base_url=service.url,
                                                         timeout=120) as http:
            more, answer = timed(lambda: http.get(f"/v1/curricula/{NAME}/history"))
            assert answer.json()["complete"]
            times += more
    return times


def report_path_ab(tmp: str, reports: int, block: int = 50) -> dict[str, float]:
    """Per-report milliseconds of `PacelineService.report` (with the next batch, one
    call per step) with and without the history's rows: two services on two databases,
    the same reports, in interleaved blocks (ABBA), so load drift hits both alike (one
    service switching its rows off and on would leave gaps, filled by background
    replays that would be timed too)."""
    arms = {}
    for with_rows in (True, False):
        url = f"sqlite:///{Path(tmp) / f'ab-{with_rows}.db'}"
        service = PacelineService(open_store(url, auto_migrate=True),
                                  Settings(database_url=url, snapshot_every=100))
        if not with_rows:
            service.commits.on_fold = None
        service.create_curriculum(SPEC)
        service.attach_run(NAME, run_id="run-0")
        arms[with_rows] = [service, service.next_batch(NAME, "run-0", 0), 0,
                           np.random.default_rng(1)]
    times: dict[bool, list[float]] = {True: [], False: []}
    for turn in range(2 * (reports // (2 * block))):
        with_rows = turn % 4 in (0, 3)
        service, batch, step, rng = arms[with_rows]
        began = time.perf_counter()
        for _ in range(block):
            owner = np.searchsorted(EDGES, batch.indices, side="right")
            accuracy = (rng.random((owner.size, 4)) < PASS[owner][:, None]).astype(float)
            length = rng.random((owner.size, 4)).round(2)
            ack = service.report(NAME, {"run_id": "run-0", "step": step,
                                        "indices": batch.indices.tolist(),
                                        "rewards": np.stack([accuracy, length], -1).tolist()},
                                 f"run-0/{step}", NextBatch(step + 1))
            assert ack.batch is not None
            batch, step = ack.batch, step + 1
        times[with_rows].append((time.perf_counter() - began) * 1000 / block)
        arms[with_rows][1:3] = [batch, step]
    for service, *_ in arms.values():
        service.close()
        service.store.close()
    return {"with_rows_ms": statistics.median(times[True]),
            "without_rows_ms": statistics.median(times[False]), "blocks": len(times[True])}


def append_ab(tmp: str, reports: int, block: int = 50) -> dict[str, float]:
    """What storing a report's row in its event adds to the report path, isolated: the
    microseconds of `pack_point`, and of `CurriculumWriter.append` with and without the
    row (two databases, the same report payload, transactions of `block` appends in
    interleaved ABBA order, so the commit's fsync is shared out and load drift hits both
    alike)."""
    engine = CurriculumEngine(CurriculumSpec.from_dict(SPEC))
    report = toy_report(engine, np.random.default_rng(2), 0)
    engine.apply(report)
    payload, point = encode_report(report), engine.progress()
    packs, _ = timed(lambda: pack_point(point), 2000)
    stores = {}
    for with_row in (True, False):
        store = open_store(f"sqlite:///{Path(tmp) / f'append-{with_row}.db'}",
                           auto_migrate=True)
        store.create_curriculum(NAME, engine.spec.to_dict())
        stores[with_row] = store
    times: dict[bool, list[float]] = {True: [], False: []}
    for turn in range(2 * (reports // (2 * block))):
        with_row = turn % 4 in (0, 3)
        began = time.perf_counter()
        with stores[with_row].writer(NAME) as writer:
            for _ in range(block):
                writer.append("report", "run-0", writer.head_seq, None, payload,
                              progress=pack_point(point) if with_row else None)
        times[with_row].append((time.perf_counter() - began) * 1000 / block)
    for store in stores.values():
        store.close()
    return {"pack_point_us": 1000 * statistics.median(packs),
            "append_with_row_us": 1000 * statistics.median(times[True]),
            "append_without_row_us": 1000 * statistics.median(times[False]),
            "row_bytes": len(pack_point(point)), "payload_bytes": len(payload)}


def timed(function: Callable[[], Any], repeat: int = 1) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - began) * 1000)
    return times, result


def summary(name: str, times: list[float], **extra: Any) -> dict[str, Any]:
    ordered = sorted(times)
    row = {"case": name, "runs": len(times), "p50_ms": round(statistics.median(ordered), 2),
           "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
           "min_ms": round(ordered[0], 2), **extra}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--replay", action="store_true",
                        help="also time a replay of the whole log (slow: ~1 ms per report)")
    parser.add_argument("--ab-reports", type=int, default=1000,
                        help="reports per arm of the report-path A/B (0: skip it)")
    parser.add_argument("--quick", action="store_true", help="300 reports, 3 repeats")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--servers", type=int, default=3,
                        help="fresh servers whose first request each cold HTTP case times")
    parser.add_argument("--wide", type=int, default=1000,
                        help="distributions of the wide curriculum of the memory case "
                             "(0: skip it)")
    parser.add_argument("--wide-reports", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.quick:
        args.reports, args.repeat, args.ab_reports = 300, 3, 200
        args.wide, args.wide_reports = min(args.wide, 200), 300
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'history.db'}"
        store = open_store(url, auto_migrate=True)
        began = time.perf_counter()
        recorder = HistoryService(store)
        engine = build_log(store, args.reports, history=recorder)
        print(json.dumps({"case": "build", "reports": args.reports,
                          "seconds": round(time.perf_counter() - began, 1),
                          "checkpoints": len(store.history_checkpoints(NAME))}), flush=True)
        rows: dict[str, dict[str, Any]] = {}
        times, view, folds = cold_app(store, args.repeat)
        rows["cold"] = summary("app cold, at a checkpoint (rows read, no fold)", times,
                               rows=int(view.seq.size), folds=folds)
        history = HistoryService(store)
        history.history(NAME)
        times, view = timed(lambda: history.history(NAME), args.repeat)
        rows["warm"] = summary("app warm, default every", times, rows=int(view.seq.size),
                               every=view.every)
        times, _ = timed(lambda: orjson.dumps(history_out(history.history(NAME)),
                                              option=orjson.OPT_SERIALIZE_NUMPY), args.repeat)
        rows["warm_json"] = summary("app warm + JSON, default every", times)
        times, view = timed(lambda: orjson.dumps(history_out(history.history(NAME, every=1)),
                                                 option=orjson.OPT_SERIALIZE_NUMPY), args.repeat)
        rows["every1"] = summary("app warm + JSON, every=1", times, rows=args.reports + 1)
        since = max(0, args.reports - 100)
        times, view = timed(lambda: history.history(NAME, since=since), args.repeat)
        rows["since"] = summary("app warm, since=head-100", times, rows=int(view.seq.size))
        if not args.no_http:  # fresh servers, the head at a checkpoint
            rows["http_cold_checkpoint"] = summary(
                "http, a fresh server's first request, head at a checkpoint",
                cold_http(url, args.servers))
        build_log(store, 1, start=args.reports, engine=engine, history=recorder)
        times, view, folds = cold_app(store, args.repeat)
        rows["cold_one"] = summary("app cold, 1 report after the last checkpoint", times,
                                   rows=int(view.seq.size), folds=folds)
        if not args.no_http:
            rows["http_cold_one"] = summary(
                "http, a fresh server's first request, 1 report after a checkpoint",
                cold_http(url, args.servers))
        build_log(store, 9, start=args.reports + 1, engine=engine, history=recorder)
        folds = history.folds
        times, view = timed(lambda: history.history(NAME))
        rows["incremental"] = summary("app after 10 new reports", times,
                                      head=int(view.head_seq), folds=history.folds - folds)
        build_log(store, 89, start=args.reports + 10, engine=engine, history=recorder)
        times, view, folds = cold_app(store, args.repeat)
        rows["cold_tail"] = summary("app cold, 99 reports after the last checkpoint", times,
                                    rows=int(view.seq.size), head=int(view.head_seq),
                                    folds=folds)
        times, view, folds = cold_app(store, max(1, args.repeat // 4), ChunksOnly)
        rows["cold_tail_replayed"] = summary(
            "app cold, 99 reports after the last checkpoint, no rows in the events (older "
            "log: the tail replayed)", times, rows=int(view.seq.size), folds=folds)
        if args.replay:
            replayed = Replayed(store)
            times, full = timed(lambda: replayed.history(NAME, every=1))
            exact = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
                [full.seq, full.step, full.time, full.reward_weights, full.reward_scale,
                 full.hypervolume, *full.series.values()],
                [*(lambda v: [v.seq, v.step, v.time, v.reward_weights, v.reward_scale,
                              v.hypervolume, *v.series.values()])(
                    HistoryService(store).history(NAME, every=1))], strict=True))
            rows["replay"] = summary("app cold, replay of the whole log (no checkpoints)",
                                     times, rows=int(full.seq.size), exact=exact,
                                     per_report_ms=round(times[0] / full.head_seq, 4))
        memory_rows(store, NAME, args.repeat, f"{args.reports + 99} reports x 4 distributions")
        if args.wide:
            wide_log(store, args.wide, args.wide_reports)
            memory_rows(store, "wide", max(1, args.repeat // 4),
                        f"{args.wide_reports} reports x {args.wide} distributions")
        store.close()
        if args.ab_reports:
            ab = report_path_ab(tmp, args.ab_reports)
            print(json.dumps({"case": "report path A/B (ms per report, median of blocks)",
                              **{k: round(v, 3) for k, v in ab.items()},
                              "overhead_pct": round(100 * (ab["with_rows_ms"]
                                                           / ab["without_rows_ms"] - 1), 1)}),
                  flush=True)
            rows_in_events = append_ab(tmp, 4 * args.ab_reports)
            print(json.dumps({"case": "row in the event: pack_point and the append with and "
                                      "without it (us, median of blocks)",
                              **{k: round(v, 2) for k, v in rows_in_events.items()}}),
                  flush=True)
        if not args.no_http:
            rows["http_cold"] = summary("http, a fresh server's first request, 99 "
                                        "reports after a checkpoint", cold_http(url, args.servers))
            with local_service(url) as service, httpx.Client(base_url=service.url,
                                                             timeout=120) as http:
                path = f"/v1/curricula/{NAME}/history"
                answer = http.get(path)
                answer.raise_for_status()
                times, answer = timed(lambda: http.get(path), args.repeat)
                rows["http_warm"] = summary("http warm, default every", times,
                                            bytes=len(answer.content))
                times, answer = timed(lambda: http.get(path, params={"every": 1}),
                                      args.repeat)
                rows["http_every1"] = summary("http warm, every=1", times,
                                              bytes=len(answer.content))
    cold = {where: rows.get(http, rows[app])["p50_ms"] for where, http, app in (
        ("at_checkpoint", "http_cold_checkpoint", "cold"),
        ("after_1", "http_cold_one", "cold_one"), ("after_99", "http_cold", "cold_tail"))}
    print(json.dumps({"summary": True, "reports": args.reports,
                      "cold_at_checkpoint_p50_ms": cold["at_checkpoint"],
                      "cold_after_1_p50_ms": cold["after_1"],
                      "cold_tail_p50_ms": cold["after_99"],
                      "target_100ms": max(cold.values()) <= 100,
                      "warm_p50_ms": rows.get("http_warm", rows["warm_json"])["p50_ms"]}),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
