"""Per-step overhead of Paceline's transports against Syllabus's in-process curriculum
(issue 17's targets), on the peer comparison's learner and protocol.

One process drives the same `learning_progress` curriculum (simulate.py's learner, batch
128 prompts x 8 rollouts, 2 objectives) through each case, seed by seed in turn as
compare.py does (load from other processes hits the cases alike over a run). With
`--lockstep` every case has its own learner and all advance step by step in turn (step t
of every case before step t + 1 of any): load that comes and goes over seconds then hits
them alike, and the server idles between a case's calls as it does between a trainer's
steps. The cases:

- `syllabus_in_process`: Syllabus's `OnlineLearningProgress` (update + sample);
- `paceline_in_process`: Paceline's engine, no service (no storage, no durability);
- `embedded`: `paceline.Client.embedded()` (the service's application layer in this
  process, SQLite with synchronous=FULL: every acknowledged report is on disk);
  `embedded_normal` the same with synchronous=NORMAL (WAL: an acknowledged report
  survives a crash of the process, not of the machine), which shows the fsync's share;
- `grpc`, `http`: `paceline.Client` against one `paceline-server serve` process on
  loopback (same SQLite settings), gRPC and HTTP/JSON.

Timed per step: the strategy's calls only (propose + observe), as `compare.py` times
them. By default a step is one call (the report asks for the next batch, `next_step`);
`--two-calls` sends `report` + `next_batch`. Every client case must give the in-process
engine's learning curve (checked). Also prints the calling thread's CPU time per step
(the client's own work over gRPC and HTTP; everything but disk waits embedded) and,
without `--lockstep`, the server process's (what the client waits for over gRPC, HTTP).

`--profile CASE` runs that case once more under cProfile and prints the functions with
the most own time: in this process only (for gRPC and HTTP, the client side).

    python benchmarks/peers/overhead.py [--seeds 3] [--steps 200] [--two-calls]
                                        [--lockstep] [--profile embedded]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare, learner, strategies
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # simulate, local_service

from compare import BATCH, LOOPBACK_CONFIG, SYLLABUS, Row, paceline, paceline_config, run
from learner import Learner
from strategies import PacelineClient, Strategy, SyllabusLearningProgress

import paceline as client_package
from local_service import cpu_seconds, local_service

#: Client cases, timed against the two in-process ones.
CLIENTS = ("embedded", "embedded_normal", "grpc", "http")
LABELS = {"syllabus_in_process": "Syllabus `OnlineLearningProgress`, in process",
          "paceline_in_process": "Paceline engine (`learning_progress`), in process, "
                                 "no storage",
          "embedded": "Paceline `Client.embedded()` (SQLite, synchronous=FULL)",
          "embedded_normal": "Paceline `Client.embedded(sqlite_synchronous=\"NORMAL\")`",
          "grpc": "Paceline `Client(\"grpc://…\")`, loopback server",
          "http": "Paceline `Client(\"http://…\")`, loopback server"}
TARGETS = {"embedded": 0.5, "grpc": 2.0, "http": 3.0}


class ThreadCpu:
    """A strategy whose calls also count the CPU time of the calling thread: for gRPC
    and HTTP the client's own work (waiting on the server costs none), for the in-process
    cases everything but waiting on the disk."""

    spent: ClassVar[dict[str, list[float]]] = {}

    def __init__(self, name: str, inner: Strategy) -> None:
        self.inner = inner
        self.seconds = ThreadCpu.spent.setdefault(name, [])

    def propose(self, step: int, size: int) -> Any:
        start = time.thread_time()
        try:
            return self.inner.propose(step, size)
        finally:
            self.seconds.append(time.thread_time() - start)

    def observe(self, *args: Any) -> None:
        start = time.thread_time()
        try:
            self.inner.observe(*args)
        finally:
            self.seconds.append(time.thread_time() - start)

    def close(self) -> None:
        self.inner.close()


def cases(url: str, target: str, folder: Path, one_call: bool
          ) -> dict[str, Callable[[int, int], Strategy]]:
    found: dict[str, Callable[[int, int], Strategy]] = {}
    if importlib.util.find_spec("syllabus") is not None:  # the `peers` extra
        found["syllabus_in_process"] = lambda seed, steps: SyllabusLearningProgress(seed)

    def engine(seed: int, steps: int) -> Strategy:
        return paceline(LOOPBACK_CONFIG)(seed, steps)

    def client(kind: str) -> Callable[[int, int], Strategy]:
        def make(seed: int, steps: int) -> Strategy:
            made = {"embedded": lambda: client_package.Client.embedded(
                        folder / "embedded.db"),
                    "embedded_normal": lambda: client_package.Client.embedded(
                        folder / "normal.db", sqlite_synchronous="NORMAL"),
                    "grpc": lambda: client_package.Client(f"grpc://{target}"),
                    "http": lambda: client_package.Client(url)}[kind]()
            return ThreadCpu(kind, PacelineClient(
                made, paceline_config(LOOPBACK_CONFIG, steps), seed,
                f"{kind}-{time.monotonic_ns()}", one_call))
        return make

    found["paceline_in_process"] = engine
    for kind in CLIENTS:
        found[kind] = client(kind)
    return found


#: Where own time is spent, by the file (or built-in) a function lives in: the first
#: group whose marker is in it. The learner's own work is left out of the shares.
GROUPS = (("learner (not timed)", ("benchmarks/",)),
          ("client (paceline/)", ("client/paceline/",)),
          ("service (paceline_server/)", ("paceline_server/",)),
          ("SQLite and SQLAlchemy", ("sqlite3", "sqlalchemy")),
          ("waiting on the server (socket, gRPC)", ("_socket.socket", "grpc/", "select.")),
          ("HTTP and JSON (httpx, httpcore, h11, json)", ("httpx/", "httpcore/", "h11/",
                                                          "json/", "_json")),
          ("numpy", ("numpy",)),
          ("pydantic", ("pydantic",)))


def lockstep(made: dict[str, Callable[[int, int], Strategy]], seed: int, steps: int
             ) -> dict[str, dict[str, Any]]:
    """One learner per case, all advanced step by step in turn (case after case within
    each step), so that the machine's load, which comes and goes over seconds, hits
    every case alike. Each case's loop is `compare.run`'s without a filter: propose,
    roll out, train, observe; the strategy's calls are timed. Returns per case the step
    times and the mean-accuracy curve."""
    learners = {name: Learner(seed) for name in made}
    strategies = {name: make(seed, steps) for name, make in made.items()}
    out: dict[str, dict[str, Any]] = {name: {"step_seconds": [], "curves": {"mean": []}}
                                      for name in made}
    try:
        for step in range(steps):
            for name, strategy in strategies.items():
                learner = learners[name]
                start = time.perf_counter()
                plan = strategy.propose(step, BATCH)
                spent = time.perf_counter() - start
                roll = learner.rollout(plan.indices)
                learner.train(roll, plan.weights, plan.scale, plan.loss_weights)
                advantages = learner.advantages(roll, plan.weights, plan.scale)
                accuracy = learner.accuracy()
                start = time.perf_counter()
                strategy.observe(step, roll, advantages,
                                 [float(accuracy.mean()), learner.brevity_rate()])
                out[name]["step_seconds"].append(spent + time.perf_counter() - start)
                out[name]["curves"]["mean"].append(float(accuracy.mean()))
    finally:
        for strategy in strategies.values():
            strategy.close()
    return out


def profile(make: Callable[[int, int], Strategy], steps: int, top: int = 25) -> str:
    """Own time per function over one seed of `make`'s strategy (this process only),
    and its sum by group (client, service, storage, waiting, encoding) in ms per step."""
    profiler = cProfile.Profile()
    profiler.enable()
    run(Row("profiled", "Paceline", make), 0, steps)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    groups: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in raw.items():
        where = f"{filename}:{function}"
        label = next((name for name, marks in GROUPS if any(m in where for m in marks)),
                     "other (Python, threading, ...)")
        groups[label] = groups.get(label, 0.0) + own
    out.write("own time by group, ms per step: " + json.dumps(
        {k: round(1e3 * v / steps, 3) for k, v in sorted(groups.items(),
                                                         key=lambda kv: -kv[1])}) + "\n")
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def summary(timings: list[float]) -> dict[str, float]:
    ms = np.asarray(timings) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "mean": float(ms.mean()),
            "p99": float(np.percentile(ms, 99))}


def table(result: dict[str, Any]) -> str:
    ms = result["ms_per_step"]
    peer = ms.get("syllabus_in_process")
    lines = ["| per step (report + next batch) | p50 ms | mean ms | p99 ms "
             "| × Syllabus (p50 / mean) | target |", "|---|---|---|---|---|---|"]
    for key, label in LABELS.items():
        if key not in ms:
            continue
        c = ms[key]
        ratio = (f"{c['p50'] / peer['p50']:.2f}× / {c['mean'] / peer['mean']:.2f}×"
                 if peer is not None else "–")
        target = f"≤ {TARGETS[key]}×" if key in TARGETS else ""
        lines.append(f"| {label} | {c['p50']:.2f} | {c['mean']:.2f} | {c['p99']:.2f} "
                     f"| {ratio} | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--two-calls", action="store_true",
                        help="report + next_batch per step (default: one report that "
                             "asks for the next batch)")
    parser.add_argument("--lockstep", action="store_true",
                        help="advance every case step by step in turn instead of running "
                             "each case's whole seed in turn (compare.py's protocol)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these cases")
    parser.add_argument("--profile", nargs="+", default=[], choices=[*CLIENTS,
                                                                      "paceline_in_process",
                                                                      "syllabus_in_process"])
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="paceline-overhead-") as tmp, \
            local_service(f"sqlite:///{tmp}/server.db", grpc=True) as server:
        assert server.grpc_target is not None
        made = cases(server.url, server.grpc_target, Path(tmp), not args.two_calls)
        if args.only:
            made = {k: v for k, v in made.items() if k in args.only
                    or k == "paceline_in_process"}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in made}
        server_cpu = {"grpc": 0.0, "http": 0.0}
        for seed in range(args.seeds):
            if args.lockstep:
                for name, one in lockstep(made, seed, args.steps).items():
                    results[name].append(one)
                continue
            for name, make in made.items():
                before = cpu_seconds(server.process.pid) if name in ("grpc", "http") else None
                results[name].append(run(Row(name, "Paceline", make), seed, args.steps))
                after = cpu_seconds(server.process.pid) if before is not None else None
                if before is not None and after is not None:
                    server_cpu[name] += after - before
        profiles = {name: profile(made[name], args.steps) for name in args.profile
                    if name in made}
    load_after = os.getloadavg()
    reference = results["paceline_in_process"]
    identical = {name: all(a["curves"] == b["curves"] for a, b in
                           zip(results[name], reference, strict=True))
                 for name in results if name in CLIENTS}
    ms = {name: summary([t for r in runs for t in r["step_seconds"]])
          for name, runs in results.items()}
    ratios = {}
    peer = ms.get("syllabus_in_process")
    if peer is not None:
        for name in ms:
            ratios[f"{name}_vs_syllabus_p50"] = round(ms[name]["p50"] / peer["p50"], 3)
            ratios[f"{name}_vs_syllabus_mean"] = round(ms[name]["mean"] / peer["mean"], 3)
    thread_cpu = {name: round(1e3 * sum(v) / (args.steps * args.seeds), 3)
                  for name, v in ThreadCpu.spent.items() if name in results}
    result = {"config": LOOPBACK_CONFIG, "peer": SYLLABUS, "seeds": args.seeds,
              "steps": args.steps, "calls_per_step": 2 if args.two_calls else 1,
              "ms_per_step": ms, "ratios": ratios, "identical_to_in_process": identical,
              "calling_thread_cpu_ms_per_step": thread_cpu,
              "server_cpu_ms_per_step": {
                  name: round(1e3 * cpu / (args.steps * args.seeds), 3)
                  for name, cpu in server_cpu.items() if name in results}
              if not args.lockstep else None,
              "protocol": "lockstep" if args.lockstep else "by seed",
              "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
              "cpus": os.cpu_count()}
    print(json.dumps({"overhead": result}), flush=True)
    print(table(result), flush=True)
    for name, text in profiles.items():
        print(f"\n## cProfile: {name} (one seed, {args.steps} steps, this process)\n{text}")


if __name__ == "__main__":
    main()
