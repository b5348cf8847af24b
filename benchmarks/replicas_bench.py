"""Scale-out benchmark: cycles/s of 8 concurrent runs on one curriculum served by 1, 2
and 4 replicas (`paceline-server serve` processes, one uvicorn worker each) on one
PostgreSQL, with Redis coordination (`redis`), Redis without write leases
(`redis-nolease`: notifications and the ack cache only) and without Redis (`database`).
Run i talks to replica i mod R. The cycle, spec and trainer processes are
`service_bench.py`'s (report 1024 x 8 x 3 as msgpack, then the next batch of 1024).

Prints one JSON object per case: cycles/s, the coordination counters the replicas
export, and where the CPU went (Linux /proc): milliseconds of CPU per cycle in the
replicas, in the trainer processes and in PostgreSQL + Redis server processes, and how
busy the machine's cores were. Cases are interleaved `--repeat` times (the machine's
load drifts); summarise with the median.

    python benchmarks/replicas_bench.py [--replicas 1 2 4] [--modes redis database]
                                        [--seconds 15] [--runs 8] [--repeat 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_service import cpu_seconds, launch, pg_schema, stop, wait_ready
from service_bench import STARTUP_S, _throughput_worker, spec

REDIS = "redis://127.0.0.1:6379/0"
COUNTERS = ("paceline_write_leases_total", "paceline_background_catch_ups_total",
            "paceline_background_caught_up_events_total", "paceline_redis_fallbacks_total")


def counters(bases: list[str]) -> dict[str, float]:
    """Coordination counters summed over the replicas (label sets flattened)."""
    total: dict[str, float] = {}
    for base in bases:
        for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
            if line.startswith(COUNTERS):
                sample, _, value = line.rpartition(" ")
                key = sample.replace("paceline_", "").replace("_total", "")
                total[key] = total.get(key, 0.0) + float(value)
    return total


def _cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (0 once it is gone)."""
    return cpu_seconds(pid, children) or 0.0


def servers_cpu() -> float:
    """CPU seconds of all PostgreSQL and Redis server processes on the machine,
    backends that exited included (the postmaster reaps them)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm.startswith(("postgres", "redis-server")):
                total += _cpu(int(entry), children=True)
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def clear_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def case(replicas: int, mode: str, runs: int, seconds: float) -> dict[str, Any]:
    prefix = f"bench:{os.urandom(4).hex()}:"
    env = {"PACELINE_REDIS_URL": REDIS, "PACELINE_REDIS_PREFIX": prefix} \
        if mode.startswith("redis") else {}
    if mode == "redis-nolease":
        env["PACELINE_REDIS_LEASE_TTL_S"] = "0"
    name = "replicas"
    with pg_schema() as url, ExitStack() as stack:
        started = [launch(url, env) for _ in range(replicas)]
        for service in started:
            stack.callback(stop, service)
        for service in started:
            wait_ready(service)
        bases = [service.url for service in started]
        httpx.post(f"{bases[0]}/v1/curricula", json=spec(name),
                   timeout=30).raise_for_status()
        context = multiprocessing.get_context("spawn")
        start, results = context.Barrier(runs + 1), context.Queue()
        workers = [context.Process(target=_throughput_worker,
                                   args=(bases[i % replicas], name, i, seconds, start,
                                         results, 2, "httpx"))
                   for i in range(runs)]
        for w in workers:
            w.start()
        pids = [service.process.pid for service in started]
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        start.wait(STARTUP_S)  # a trainer that died on the way breaks the barrier
        began = time.perf_counter()
        cpu = (sum(map(_cpu, pids)), servers_cpu(), machine_jiffies())
        # The trainers' start-up (interpreter, imports, first batch) is not cycle work.
        trainers_setup = sum(_cpu(w.pid) for w in workers if w.pid is not None)
        total = sum(results.get(timeout=seconds + 120)[0] for _ in workers)
        elapsed = time.perf_counter() - began
        cpu_after = (sum(map(_cpu, pids)), servers_cpu(), machine_jiffies())
        for w in workers:
            w.join()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        extra = counters(bases)
    if mode.startswith("redis"):
        clear_prefix(prefix)
    trainers = (children.ru_utime + children.ru_stime - before_children.ru_utime
                - before_children.ru_stime - trainers_setup)
    busy = cpu_after[2][0] - cpu[2][0]
    ms = 1000 / max(total, 1)
    return {"case": "replicas", "replicas": replicas, "coordination": mode, "runs": runs,
            "cycles": total, "cycles_per_s": round(total / elapsed, 1),
            "cpu_ms_per_cycle": {
                "replicas": round((cpu_after[0] - cpu[0]) * ms, 2),
                "trainers": round(trainers * ms, 2),
                "postgres_redis": round((cpu_after[1] - cpu[1]) * ms, 2)},
            "cores_busy": round(busy / max(cpu_after[2][1] - cpu[2][1], 1)
                                * (os.cpu_count() or 1), 2),
            **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", choices=["redis", "redis-nolease", "database"],
                        default=["redis", "redis-nolease", "database"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 replicas, Redis, 2 runs for 2 s")
    args = parser.parse_args()
    if args.quick:
        args.replicas, args.modes, args.runs, args.seconds = [2], ["redis"], 2, 2.0
    for _ in range(args.repeat):
        for replicas in args.replicas:
            for mode in args.modes:
                print(json.dumps(case(replicas, mode, args.runs, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
