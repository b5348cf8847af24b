"""Real replicas for the scale-out tests: `paceline-server serve` processes on one
PostgreSQL schema (and optionally one Redis prefix), a load of trainer threads that fail
over between them, and the checks that the result equals a sequential replay of the log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from paceline_server.adapters.redis_coordination import coordinator_from_settings
from paceline_server.app.codec import decode_batch, decode_report
from paceline_server.app.service import PacelineService
from paceline_server.domain import CurriculumSpec
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.sql import SqlStore
from support import (
    REDIS_URL,
    ServiceProcess,
    fresh_pg_schema,
    launch_service,
    stop_service,
    wait_ready,
)

NAME = "shared"
#: A state-dependent sampler, so a batch proposed from a wrong state would differ.
SPEC: dict[str, Any] = {
    "name": NAME,
    "layout": {"distributions": [{"name": "easy", "size": 120}, {"name": "mid", "size": 80},
                                 {"name": "hard", "size": 60}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "learning_progress",
    "weighting": {"kind": "fixed", "weights": [3, 1]},
    "batch_size": 12,
    "seed": 7,
}
#: Snapshots every 5 events, all kept: each one is a replica's engine at that seq.
BASE_ENV = {"PACELINE_SNAPSHOT_EVERY": "5", "PACELINE_SNAPSHOT_KEEP": "100",
            "PACELINE_AUTO_MIGRATE": "true", "PACELINE_LOG_LEVEL": "warning",
            "PACELINE_REDIS_LEASE_TTL_S": "1"}


Pair = tuple[PacelineService, PacelineService]


@contextmanager
def service_pair(redis_url: str, prefix: str, **options: Any) -> Iterator[Pair]:
    """Two replicas in one process (own stores, own Redis coordinators) on a fresh
    PostgreSQL schema and the Redis prefix given, with `SPEC` created and run "r"
    attached; `options` are further settings."""
    with fresh_pg_schema() as url:
        settings = Settings(database_url=url, redis_url=redis_url, redis_prefix=prefix,
                            snapshot_every=4, **options)
        services = [PacelineService(open_store(url, auto_migrate=True), settings,
                                    coordinator=coordinator_from_settings(settings))
                    for _ in range(2)]
        try:
            services[0].create_curriculum(SPEC)
            services[0].attach_run(NAME, run_id="r")
            yield services[0], services[1]
        finally:
            for service in services:
                service.close()
                service.store.close()


def report_body(service: PacelineService, step: int) -> dict[str, Any]:
    """Run "r"'s report of `step` on the batch `service` serves for it."""
    indices = service.next_batch(NAME, "r", step).indices
    rewards = np.random.default_rng(step).integers(0, 2, (indices.size, 4, 2))
    return {"run_id": "r", "step": step, "indices": indices.tolist(),
            "rewards": rewards.astype(float).tolist()}


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                         + "}" if labels else "")
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return 0.0


@contextmanager
def replicas(database_url: str, count: int, log_dir: Path,
             env: Mapping[str, str] | None = None) -> Iterator[list[Replica]]:
    """`count` service processes started together, ready when each /readyz is 200."""
    started: list[ServiceProcess] = []
    try:
        for i in range(count):
            started.append(launch_service(database_url, log_dir / f"replica-{i}.log",
                                          env={**BASE_ENV, **(env or {})}))
        deadline = time.monotonic() + 40
        for service in started:
            wait_ready(service, deadline)
        yield [Replica(s.url, s.process, s.log) for s in started]
    finally:
        for service in started:
            stop_service(service)


@contextmanager
def redis_prefix(url: str = REDIS_URL) -> Iterator[str]:
    """A unique key prefix, its keys deleted afterwards."""
    prefix = f"paceline-test:{os.urandom(6).hex()}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.ConnectionError:
            pass  # the test's own Redis server is gone with its data
        finally:
            client.close()


@dataclass
class RedisServer:
    """A private `redis-server` on a free port that a test may kill and restart."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Load:
    """Eight trainers on one curriculum through all replicas: run i asks for the batch
    of step s from replica (i + 2s) mod R and reports to the next one, so (with two
    replicas) every report is folded on one replica and the run's next batch is read on
    the other. A request that fails in transport or with a 5xx goes to the next replica
    (same idempotency key, same (run, step))."""

    urls: list[str]
    runs: int = 8
    steps: int = 12
    #: idempotency key -> every (seq, replayed) answer the trainers got for it
    acks: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)
    #: (run, step) -> every batch (indices) the trainers were served for it
    served: dict[tuple[str, int], list[list[int]]] = field(default_factory=dict)
    #: (run, step) -> (seq the served batch was computed at, seq of the run's report
    #: of the step before, acknowledged before the batch was asked for)
    freshness: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    #: idempotency key -> the report body sent under it
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    retries: int = 0
    errors: list[BaseException] = field(default_factory=list)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def acked(self) -> int:
        with self._guard:
            return len(self.acks)

    def _call(self, clients: list[httpx.Client], first: int, path: str,
              **kwargs: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        index = first
        while True:
            try:
                response = clients[index % len(clients)].post(path, **kwargs)
                if response.status_code < 500:
                    response.raise_for_status()  # a 4xx is a bug: fail the test
                    result: dict[str, Any] = response.json()
                    return result
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica answered {path}")
            with self._guard:
                self.retries += 1
            index += 1
            time.sleep(0.02)

    def _trainer(self, i: int) -> None:
        run = f"run-{i}"
        rng = np.random.default_rng(i)
        base = f"/v1/curricula/{NAME}"
        clients = [httpx.Client(base_url=url, timeout=15) for url in self.urls]
        try:
            self._call(clients, i, f"{base}/runs", json={"run_id": run})
            acked = 0
            for step in range(self.steps):
                batch = self._call(clients, i + 2 * step, f"{base}/batches",
                                   json={"run_id": run, "step": step})
                indices = batch["indices"]
                with self._guard:
                    self.served.setdefault((run, step), []).append(indices)
                    self.freshness[(run, step)] = (batch["seq"], acked)
                rewards = np.stack([rng.integers(0, 2, (len(indices), 4)),
                                    rng.integers(0, 100, (len(indices), 4))], axis=-1)
                key = f"{run}/{step}"
                body = {"run_id": run, "step": step, "indices": indices,
                        "rewards": rewards.astype(float).tolist()}
                with self._guard:
                    self.bodies[key] = body
                ack = self._call(clients, i + 2 * step + 1, f"{base}/reports", json=body,
                                 headers={"Idempotency-Key": key})
                acked = ack["seq"]
                with self._guard:
                    self.acks.setdefault(key, []).append((ack["seq"], ack["replayed"]))
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            for client in clients:
                client.close()

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._trainer, args=(i,), daemon=True)
                   for i in range(self.runs)]
        for thread in threads:
            thread.start()
        return threads


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def check_log_equals_replay(database_url: str, load: Load) -> bytes:
    """Everything the trainers were told is in the log exactly once, and every replica's
    engine was exact whenever it wrote: each snapshot and each stored batch equals what
    a fresh engine folding the log in seq order gives at that seq. Returns the final
    state (engine bytes)."""
    store = open_store(database_url)
    try:
        events = list(store.events(NAME))
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(events) + 1)), "the log has gaps"
        keys = [e.idempotency_key for e in events]
        assert len(keys) == len(set(keys)), "a report was applied twice"
        assert set(keys) == set(load.acks), "the log and the acknowledged reports differ"
        assert len(events) == load.runs * load.steps
        by_key = {e.idempotency_key: e.seq for e in events}
        for key, answers in load.acks.items():
            assert {seq for seq, _ in answers} == {by_key[key]}, f"ack of {key} lost"

        spec = CurriculumSpec.from_dict(store.get_curriculum(NAME).spec)
        assert isinstance(store, SqlStore)
        snapshots = _snapshots(store)
        assert len(snapshots) >= len(events) // 5
        batches = {key: store.get_batch(NAME, *key) for key in load.served}
        by_seq: dict[int, list[tuple[str, int]]] = {}
        for key, record in batches.items():
            assert record is not None
            by_seq.setdefault(record.seq, []).append(key)
            stored = decode_batch(record.payload).indices.tolist()
            assert all(seen == stored for seen in load.served[key]), \
                f"{key} was served two different batches"
            served_at, reported = load.freshness[key]
            assert served_at == record.seq
            # Read your writes across replicas: the batch reflects the run's last report.
            assert record.seq >= reported, f"batch {key} at seq {record.seq} < {reported}"

        engine = CurriculumEngine(spec)
        for seq in range(len(events) + 1):
            if seq:
                engine.apply(decode_report(events[seq - 1].payload))
            if seq in snapshots:
                # Stored as the engine's array stream: equal once decoded.
                stored = CurriculumEngine.from_chunks(spec, [snapshots[seq]]).to_bytes()
                assert stored == engine.to_bytes(), f"snapshot {seq} is not exact"
            for run, step in by_seq.get(seq, []):
                expected = engine.next_batch(run, step).indices.tolist()
                assert load.served[(run, step)][0] == expected, \
                    f"batch {(run, step)} was not proposed from the state at seq {seq}"
        final = engine.to_bytes()
        # A new process rebuilding from the store (snapshot + tail) agrees.
        rebuilt = PacelineService(store, Settings(database_url=database_url)).engine(NAME)
        assert rebuilt.seq == len(events)
        assert rebuilt.engine.to_bytes() == final
        return final
    finally:
        store.close()


def _snapshots(store: SqlStore) -> dict[int, bytes]:
    """Every stored snapshot of the curriculum by seq, read through the store (which
    may keep one in several chunks)."""
    from sqlalchemy import select

    from paceline_server.store import tables as t

    with store.engine.connect() as conn:
        seqs = [int(seq) for seq in conn.execute(select(t.snapshots.c.seq)).scalars()]
    found: dict[int, bytes] = {}
    for seq in seqs:
        record = store.latest_snapshot(NAME, at_most=seq)
        assert record is not None and record.seq == seq
        found[seq] = record.state
    return found


def state_of(url: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{url}/v1/curricula/{NAME}/state", timeout=10).json()
    return state
