"""Service round-trip benchmark: a real uvicorn process on loopback.

Per backend (SQLite file, PostgreSQL): the latency of one training-step cycle — report
1024 prompts x 8 rollouts x 3 objectives, then ask for the next batch of 1024 — p50/p99
in ms, for JSON and msgpack bodies; then cycles/s with 8 concurrent runs on one
curriculum. Each msgpack case runs twice: as two requests (report, then batch) and as
one (`POST .../reports?next_step=s+1`, the ack carrying the batch). Prints one JSON
object per case. Targets on 2 cores: p50 <= 10 ms, p99 <= 30 ms, >= 300 cycles/s on
SQLite.

The 8 trainers are processes on the same 2 cores as the server (in production they run
on their own GPU nodes), so their own CPU is taken from the service's. By default they
are lean load generators (`--trainer lean`: a keep-alive `http.client` connection, a
pool of pre-drawn reward arrays, orjson for the answers, about 0.7 ms of CPU per cycle);
`--trainer httpx` runs the earlier trainers (httpx, rewards drawn every step, about
2.8 ms per cycle). Both print the server's and the trainers' CPU per cycle.

    python benchmarks/service_bench.py [--backends sqlite postgresql] [--cycles 200]
                                       [--trainer lean|httpx]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgpack
import numpy as np
import orjson

from local_service import cpu_seconds, local_service, pg_schema

N, B, G, K = 100_000, 1024, 8, 3
STARTUP_S = 120.0  # longest wait for the trainer processes to start


@contextmanager
def database(backend: str, tmp: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/bench.db"
    else:
        with pg_schema() as url:
            yield url


def spec(name: str) -> dict[str, Any]:
    sizes = [40_000, 30_000, 20_000, 10_000]
    return {"name": name, "batch_size": B, "sampler": "uniform", "weighting": "fixed",
            "layout": {"distributions": [{"name": f"d{i}", "size": s}
                                         for i, s in enumerate(sizes)]},
            "objectives": ["correct", "format", "brevity"]}


def typed(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def encode(run: str, step: int, indices: list[int], rng: np.random.Generator,
           encoding: str) -> tuple[bytes, str]:
    """The trainer's request body (built before the clock starts: it is client work)."""
    rewards = rng.integers(0, 2, (len(indices), G, K)).astype(np.float32)
    if encoding == "msgpack":
        report = {"run_id": run, "step": step, "indices": typed(np.asarray(indices)),
                  "rewards": typed(rewards)}
        return msgpack.packb(report), "application/msgpack"
    report = {"run_id": run, "step": step, "indices": indices, "rewards": rewards.tolist()}
    return json.dumps(report).encode(), "application/json"


def cycle(http: httpx.Client, name: str, run: str, step: int, rng: np.random.Generator,
          encoding: str, indices: list[int], timer: list[float] | None = None,
          calls: int = 2) -> list[int]:
    content, ctype = encode(run, step, indices, rng, encoding)
    if timer is not None:
        timer.append(time.perf_counter())
    ack = http.post(f"/v1/curricula/{name}/reports", content=content,
                    params={"next_step": str(step + 1)} if calls == 1 else None,
                    headers={"Content-Type": ctype, "Idempotency-Key": f"{run}/{step}"})
    ack.raise_for_status()
    if calls == 1:
        return list(ack.json()["batch"]["indices"])
    batch = http.post(f"/v1/curricula/{name}/batches", json={"run_id": run, "step": step + 1})
    batch.raise_for_status()
    return list(batch.json()["indices"])


def latency_case(base: str, backend: str, encoding: str, cycles: int,
                 calls: int = 2) -> dict[str, Any]:
    name = f"lat-{encoding}-{calls}"
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=base, timeout=30) as http:
        http.post("/v1/curricula", json=spec(name)).raise_for_status()
        http.post(f"/v1/curricula/{name}/runs", json={"run_id": "r"}).raise_for_status()
        indices = http.post(f"/v1/curricula/{name}/batches",
                            json={"run_id": "r", "step": 0}).json()["indices"]
        times = []
        for step in range(cycles):
            started: list[float] = []
            indices = cycle(http, name, "r", step, rng, encoding, indices, started, calls)
            times.append((time.perf_counter() - started[0]) * 1e3)
    warm = np.asarray(times[5:] or times)  # the first 5 warm up, when there are more
    return {"case": "round_trip", "backend": backend, "encoding": encoding, "calls": calls,
            "cycles": len(warm), "p50_ms": round(float(np.percentile(warm, 50)), 2),
            "p99_ms": round(float(np.percentile(warm, 99)), 2)}


class LeanTrainer:
    """The load generator's side of a cycle at the least CPU Python allows: one
    keep-alive connection, rewards taken in turn from arrays drawn up front."""

    POOL = 16

    def __init__(self, base: str, name: str, run: str, rng: np.random.Generator) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.prefix = f"/v1/curricula/{name}"
        self.run = run
        self.pool = [rng.integers(0, 2, (B, G, K)).astype(np.float32)
                     for _ in range(self.POOL)]

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> Any:
        self.connection.request("POST", self.prefix + path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        return orjson.loads(data)

    def cycle(self, step: int, indices: np.ndarray, calls: int) -> np.ndarray:
        report = msgpack.packb({
            "run_id": self.run, "step": step, "indices": typed(indices),
            "rewards": typed(self.pool[step % self.POOL][:indices.size])})
        headers = {"Content-Type": "application/msgpack",
                   "Idempotency-Key": f"{self.run}/{step}"}
        if calls == 1:
            ack = self.post(f"/reports?next_step={step + 1}", report, headers)
            return np.asarray(ack["batch"]["indices"], dtype=np.int64)
        self.post("/reports", report, headers)
        batch = self.post("/batches", orjson.dumps({"run_id": self.run, "step": step + 1}),
                          {"Content-Type": "application/json"})
        return np.asarray(batch["indices"], dtype=np.int64)


def _throughput_worker(base: str, name: str, i: int, seconds: float,
                       start: Any, results: Any, calls: int = 2,
                       trainer: str = "lean") -> None:
    """One trainer: its own process, as real trainers are (threads of one Python process
    would measure the client's GIL, not the service). Puts (cycles, CPU seconds)."""
    rng = np.random.default_rng(i)
    run = f"run-{i}"
    done = 0
    with httpx.Client(base_url=base, timeout=60) as http:
        http.post(f"/v1/curricula/{name}/runs", json={"run_id": run}).raise_for_status()
        indices = http.post(f"/v1/curricula/{name}/batches",
                            json={"run_id": run, "step": 0}).json()["indices"]
        lean = LeanTrainer(base, name, run, rng) if trainer == "lean" else None
        array = np.asarray(indices, dtype=np.int64)
        start.wait(STARTUP_S)
        began = time.process_time()
        stop = time.perf_counter() + seconds
        step = 0
        while time.perf_counter() < stop:
            if lean is not None:
                array = lean.cycle(step, array, calls)
            else:
                indices = cycle(http, name, run, step, rng, "msgpack", indices, calls=calls)
            step += 1
            done += 1
        cpu = time.process_time() - began
    results.put((done, cpu))


def throughput_case(base: str, backend: str, runs: int, seconds: float,
                    calls: int = 2, server_pid: int | None = None,
                    trainer: str = "lean") -> dict[str, Any]:
    name = f"throughput-{calls}"
    with httpx.Client(base_url=base, timeout=30) as http:
        http.post("/v1/curricula", json=spec(name)).raise_for_status()
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(runs + 1), context.Queue()
    workers = [context.Process(target=_throughput_worker,
                               args=(base, name, i, seconds, start, results, calls,
                                     trainer))
               for i in range(runs)]
    for w in workers:
        w.start()
    start.wait(STARTUP_S)  # a trainer that died on the way breaks the barrier
    began = time.perf_counter()
    cpu_before = None if server_pid is None else cpu_seconds(server_pid)
    done = [results.get(timeout=seconds + 120) for _ in workers]
    elapsed = time.perf_counter() - began
    total = sum(cycles for cycles, _ in done)
    cpu_after = None if server_pid is None else cpu_seconds(server_pid)
    for w in workers:
        w.join()
    result: dict[str, Any] = {
        "case": "concurrent_runs", "backend": backend, "runs": runs, "calls": calls,
        "trainer": trainer, "cycles": total, "cycles_per_s": round(total / elapsed, 1)}
    if total:
        result["trainer_cpu_ms_per_cycle"] = round(sum(c for _, c in done) / total * 1e3, 2)
    if cpu_before is not None and cpu_after is not None and total:
        # The service's own CPU per cycle (the trainers share the machine's cores).
        result["server_cpu_ms_per_cycle"] = round((cpu_after - cpu_before) / total * 1e3, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--trainer", choices=["lean", "httpx"], default="lean",
                        help="the concurrent trainers' HTTP loop (see above)")
    args = parser.parse_args()
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as tmp, database(backend, tmp) as url, \
                local_service(url, {"PACELINE_WORKERS": str(args.workers)}) as service:
            base, pid = service.url, service.process.pid
            for encoding, calls in (("json", 2), ("msgpack", 2), ("msgpack", 1)):
                print(json.dumps(latency_case(base, backend, encoding, args.cycles, calls)),
                      flush=True)
            for calls in (2, 1):
                result = throughput_case(base, backend, args.runs, args.seconds, calls, pid,
                                         args.trainer)
                print(json.dumps({**result, "workers": args.workers}), flush=True)


if __name__ == "__main__":
    main()
