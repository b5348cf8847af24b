"""The history endpoint on a long curriculum: what the first request (a replay of the log)
and later ones (cached, only new reports folded) cost, in-process and over HTTP.

Builds a SQLite database with `--reports` reports of a toy trainer (dump_ucb +
hypervolume, 4 distributions, 2 objectives, batch 32 x group 4, a snapshot every 100),
written straight into the event log by the engine (no service round trips), then:
- app: `HistoryService.history` cold (replay), warm (default `every`: <= 1000 rows),
  warm with every=1, `since` near the head, and after 10 new reports (incremental);
- http: GET /v1/curricula/{name}/history against a `paceline-server serve` process.
Prints one JSON object per measurement (milliseconds) and a summary line.

    python benchmarks/history_bench.py --reports 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
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
from paceline_server.app.history import HistoryService
from paceline_server.domain import CurriculumSpec, Report
from paceline_server.engine import CurriculumEngine
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
              snapshot_every: int = 100, chunk: int = 500) -> CurriculumEngine:
    """Append `reports` toy reports to the curriculum's log (creating it when `start` is 0)
    in transactions of `chunk`, with snapshots as the service writes them."""
    if start == 0:
        engine = CurriculumEngine(CurriculumSpec.from_dict(SPEC))
        store.create_curriculum(NAME, engine.spec.to_dict())
    assert engine is not None
    rng = np.random.default_rng(start)
    step = start
    while step < start + reports:
        with store.writer(NAME) as writer:
            for _ in range(min(chunk, start + reports - step)):
                batch = engine.next_batch("run-0", step)
                owner = np.searchsorted(EDGES, batch.indices, side="right")
                accuracy = (rng.random((owner.size, 4)) < PASS[owner][:, None]).astype(float)
                length = rng.random((owner.size, 4)).round(2)
                report = Report.dense(run_id="run-0", step=step, indices=batch.indices,
                                      rewards=np.stack([accuracy, length], axis=-1),
                                      layout=engine.layout, num_objectives=2)
                engine.apply(report)
                seq = writer.append("report", "run-0", step, f"run-0/{step}",
                                    encode_report(report), checked=True)
                if seq % snapshot_every == 0:
                    writer.put_snapshot(seq, engine.to_bytes())
                step += 1
    return engine


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
    parser.add_argument("--quick", action="store_true", help="300 reports, 3 repeats")
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.reports, args.repeat = 300, 3
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'history.db'}"
        store = open_store(url, auto_migrate=True)
        began = time.perf_counter()
        engine = build_log(store, args.reports)
        print(json.dumps({"case": "build", "reports": args.reports,
                          "seconds": round(time.perf_counter() - began, 1)}), flush=True)
        rows: dict[str, dict[str, Any]] = {}
        history = HistoryService(store)
        times, view = timed(lambda: history.history(NAME))
        rows["cold"] = summary("app cold (replay the log)", times, rows=int(view.seq.size),
                               per_report_ms=round(times[0] / args.reports, 4))
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
        build_log(store, 10, start=args.reports, engine=engine)
        times, view = timed(lambda: history.history(NAME))
        rows["incremental"] = summary("app after 10 new reports", times,
                                      head=int(view.head_seq))
        store.close()
        if not args.no_http:
            with local_service(url) as service, httpx.Client(base_url=service.url,
                                                             timeout=120) as http:
                path = f"/v1/curricula/{NAME}/history"
                times, answer = timed(lambda: http.get(path))
                answer.raise_for_status()
                rows["http_cold"] = summary("http first answer (partial while replaying)",
                                            times, complete=answer.json()["complete"],
                                            replayed_seq=answer.json()["replayed_seq"])
                began = time.perf_counter()
                while not http.get(path).json()["complete"]:
                    time.sleep(0.2)
                rows["http_replayed"] = summary(
                    "http until complete (the server's replay)",
                    [(time.perf_counter() - began) * 1000 + times[0]])
                times, answer = timed(lambda: http.get(path), args.repeat)
                rows["http_warm"] = summary("http warm, default every", times,
                                            bytes=len(answer.content))
                times, answer = timed(lambda: http.get(path, params={"every": 1}),
                                      args.repeat)
                rows["http_every1"] = summary("http warm, every=1", times,
                                              bytes=len(answer.content))
    target = rows.get("http_warm", rows["warm_json"])["p50_ms"]
    print(json.dumps({"summary": True, "reports": args.reports,
                      "warm_p50_ms": target, "target_100ms": target <= 100,
                      "cold_ms": rows["cold"]["p50_ms"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
