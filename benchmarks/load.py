"""Bounded load generator: N concurrent runs on one curriculum, through the asyncio client
SDK (httpx), against a Paceline service on loopback.

Every run attaches, then loops `next_batch(step)` -> `report(step)` (idempotency key
`{run}/{step}`, rewards a pure function of (run, step, index), so a retried report is
byte-identical) until it has done `--steps` steps or `--duration` seconds have passed.
The client retries connection errors, timeouts, 429 and 503 with backoff, so a restarted
service costs latency, not errors. Prints one JSON object: throughput, latency percentiles
per call (including the retries), errors (calls that failed after every retry; goal 0)
and retries.

    python benchmarks/load.py                          # own server, temporary SQLite file
    python benchmarks/load.py --backend postgresql     # own server, fresh PostgreSQL schema
    python benchmarks/load.py --url http://127.0.0.1:8000 --runs 16 --steps 200

Bounded on purpose: loopback URLs only, at most 256 runs, 100 000 steps per run and 600 s.
The reliability tests (`tests/reliability/`) import `run_load` and drive it while they
kill the service or its database connections.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

import paceline
from paceline import RetryPolicy

MAX_RUNS, MAX_STEPS, MAX_DURATION_S = 256, 100_000, 600.0
GROUP = 4  # rollouts per prompt
DISTRIBUTIONS = [{"name": "easy", "size": 6000}, {"name": "hard", "size": 4000}]
OBJECTIVES: list[Any] = ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 512]}]
#: Patient enough to ride out a service restart (a few seconds) without failing a call.
PATIENT = RetryPolicy(max_attempts=40, backoff_initial=0.05, backoff_max=0.5,
                      retry_after_max=1.0)


@dataclass(frozen=True)
class Ack:
    """An acknowledged report: the service has committed it at `seq`."""

    run_id: str
    step: int
    key: str
    seq: int
    replayed: bool


@dataclass
class LoadResult:
    runs: int
    elapsed_s: float = 0.0
    acks: list[Ack] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"batch": [], "report": []})
    errors: list[str] = field(default_factory=list)
    retries: int = 0

    def summary(self) -> dict[str, Any]:
        cycles = len(self.acks)
        requests = sum(len(v) for v in self.latencies.values())
        return {
            "runs": self.runs, "cycles": cycles, "requests": requests,
            "elapsed_s": round(self.elapsed_s, 3),
            "cycles_per_s": round(cycles / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "requests_per_s": round(requests / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": {kind: percentiles(values) for kind, values in self.latencies.items()},
            "errors": len(self.errors), "error_samples": self.errors[:5],
            "retries": self.retries,
            "replayed_acks": sum(a.replayed for a in self.acks),
        }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(1000 * ordered[-1], 2)}


def rewards_for(run_id: str, step: int, indices: list[int]) -> list[list[list[float]]]:
    """[n][g][2] rewards, a pure function of (run, step, index): a retry sends the same."""
    salt = sum(run_id.encode()) + 7919 * step
    return [[[float((i * 31 + salt + j) % 3 == 0), float((i + 13 * j + salt) % 512)]
             for j in range(GROUP)] for i in indices]


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"load.py drives loopback services only; got host {host!r}")


class _RetryCounter(logging.Handler):
    """Counts the SDK's retry log lines (one per retried attempt)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retry" in record.getMessage():
            self.count += 1


async def run_load(url: str, curriculum: str = "load", *, runs: int = 8, steps: int = 50,
                   duration_s: float = 30.0, token: str | None = None,
                   retries: RetryPolicy = PATIENT, batch_size: int = 32,
                   timeout_s: float = 10.0) -> LoadResult:
    """Drive `runs` concurrent runs on `curriculum` (created if missing) and collect every
    acknowledgement, latency and error."""
    check_loopback(url)
    if not (1 <= runs <= MAX_RUNS and 1 <= steps <= MAX_STEPS
            and 0 < duration_s <= MAX_DURATION_S):
        raise ValueError(f"bounds: runs 1..{MAX_RUNS}, steps 1..{MAX_STEPS}, "
                         f"duration (0, {MAX_DURATION_S}] s")
    result = LoadResult(runs=runs)
    counter = _RetryCounter()
    sdk_logger = logging.getLogger("paceline")
    previous_level = sdk_logger.level
    sdk_logger.addHandler(counter)
    sdk_logger.setLevel(logging.INFO)
    limits = httpx.Limits(max_connections=runs + 4)
    try:
        async with paceline.AsyncClient(url, token, retries=retries, timeout=timeout_s,
                                        transport=httpx.AsyncHTTPTransport(limits=limits),
                                        ) as client:
            cur = await client.create_curriculum(
                curriculum, DISTRIBUTIONS, objectives=OBJECTIVES, sampler="dump_ucb",
                weighting="fixed", batch_size=batch_size, seed=0, exist_ok=True)
            start = time.perf_counter()
            deadline = start + duration_s
            await asyncio.gather(*(_one_run(cur, f"run-{i}", steps, deadline, result)
                                   for i in range(runs)))
            result.elapsed_s = time.perf_counter() - start
    finally:
        sdk_logger.removeHandler(counter)
        sdk_logger.setLevel(previous_level)
    result.retries = counter.count
    return result


async def _one_run(cur: paceline.AsyncCurriculum, run_id: str, steps: int, deadline: float,
                   result: LoadResult) -> None:
    try:
        run = await cur.start_run(run_id=run_id, heartbeat_interval=None)
    except paceline.PacelineError as exc:
        result.errors.append(f"attach {run_id}: {exc.code}: {exc.message}")
        return
    for step in range(steps):
        if time.perf_counter() >= deadline:
            return
        began = time.perf_counter()
        try:
            batch = await run.next_batch(step)
        except paceline.PacelineError as exc:
            result.errors.append(f"batch {run_id}/{step}: {exc.code}: {exc.message}")
            continue
        result.latencies["batch"].append(time.perf_counter() - began)
        key = f"{run_id}/{step}"
        began = time.perf_counter()
        try:
            ack = await run.report(step, batch.indices,
                                   rewards_for(run_id, step, batch.indices),
                                   idempotency_key=key)
        except paceline.PacelineError as exc:
            result.errors.append(f"report {key}: {exc.code}: {exc.message}")
            continue
        result.latencies["report"].append(time.perf_counter() - began)
        result.acks.append(Ack(run_id, step, key, ack.seq, ack.replayed))


# ---------------------------------------------------------------- own server (CLI only)
@contextmanager
def database(backend: str) -> Iterator[str]:
    """A temporary SQLite file, or a scratch PostgreSQL schema."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/load.db"
        return
    from local_service import pg_schema  # beside this script; only the CLI needs it

    with pg_schema("load") as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (loopback); default: start one")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite",
                        help="database of the service started when --url is not given")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="steps per run")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds at most")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--curriculum", default=f"load-{uuid.uuid4().hex[:6]}")
    parser.add_argument("--token", default=os.environ.get("PACELINE_TOKEN"))
    args = parser.parse_args(argv)

    def drive(url: str) -> LoadResult:
        return asyncio.run(run_load(url, args.curriculum, runs=args.runs, steps=args.steps,
                                    duration_s=args.duration, token=args.token,
                                    batch_size=args.batch_size))

    if args.url:
        check_loopback(args.url)
        result = drive(args.url)
        backend = "external"
    else:
        from local_service import local_service

        with database(args.backend) as url, local_service(url) as service:
            result = drive(service.url)
        backend = args.backend
    print(json.dumps({"backend": backend, **result.summary()}))
    return 0 if not result.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
