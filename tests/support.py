"""What the tests share, written once: the databases they run on (PostgreSQL and Redis
from the environment), curriculum specs, builders of reports and signals, a real service
process, and fault-injecting HTTP transports.

PACELINE_TEST_PG_URL (default: the CI server, postgresql+psycopg://postgres@127.0.0.1:5432/
test) and PACELINE_TEST_REDIS_URL (default redis://127.0.0.1:6379/0) point the tests at
other servers; nothing else names a host or a port.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, make_url, text

from paceline_server.domain import CurriculumSpec, DatasetLayout, ObjectiveSpec, Report
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.signals import ReportSignals

# ------------------------------------------------------------------ servers
PG_URL = os.environ.get("PACELINE_TEST_PG_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PACELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The PostgreSQL server's port (a fault proxy listens in front of it).
PG_PORT = make_url(PG_URL).port or 5432


def postgres_url(schema: str | None = None, *, port: int | None = None) -> str:
    """The test PostgreSQL URL, with `schema` as its search_path and reached through
    `port` (a proxy in front of the server) when given."""
    url = make_url(PG_URL)
    if port is not None:
        url = url.set(port=port)
    rendered = url.render_as_string(hide_password=False)
    if schema is None:
        return rendered
    return f"{rendered}{'&' if url.query else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield postgres_url(schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ specs
#: The sample curriculum of the API, client, gRPC, CLI and reliability tests: two
#: distributions (easy 60, hard 40), a maximised and a bounded minimised objective.
SPEC: dict[str, Any] = {
    "name": "math",
    "layout": {"distributions": [{"name": "easy", "size": 60}, {"name": "hard", "size": 40}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "uniform",
    "weighting": {"kind": "fixed", "weights": [3, 1]},
    "batch_size": 8,
    "seed": 1,
}


def client_spec(spec: Mapping[str, Any] = SPEC) -> dict[str, Any]:
    """`spec` as the client's `create_curriculum` takes it after the name: the
    distributions at the top level, no name."""
    body = copy.deepcopy({k: v for k, v in spec.items() if k not in ("name", "layout")})
    return {"distributions": copy.deepcopy(spec["layout"]["distributions"]), **body}


#: `SPEC` without its name, as the client tests create it under names of their own.
CLIENT_SPEC = client_spec()


def layout(*sizes: int) -> DatasetLayout:
    """Distributions d0, d1, ... of the given sizes, contiguous."""
    return DatasetLayout.from_sizes([(f"d{i}", s) for i, s in enumerate(sizes)])


def objectives(*names: str) -> tuple[ObjectiveSpec, ...]:
    return tuple(ObjectiveSpec(name) for name in (names or ("acc",)))


def spec(sizes: Sequence[int] = (100, 1000), objective_names: Sequence[str] = ("acc",),
         sampler: Any = "uniform", weighting: Any = "fixed", batch_size: int | None = None,
         seed: int = 0, **extra: Any) -> CurriculumSpec:
    return CurriculumSpec.from_dict({
        "name": "test",
        "layout": {"distributions": [{"name": f"d{i}", "size": s} for i, s in enumerate(sizes)]},
        "objectives": list(objective_names),
        "sampler": sampler, "weighting": weighting,
        "batch_size": min(16, sum(sizes)) if batch_size is None else batch_size,
        "seed": seed, **extra,
    })


def report(curriculum: CurriculumSpec, indices: Sequence[int] | np.ndarray,
           rewards: Any, advantages: Any = None, run_id: str = "run", step: int = 0,
           **extra: Any) -> Report:
    """A dense report: rewards [n, g, k] (or [n, g] with one objective)."""
    return Report.dense(run_id=run_id, step=step, indices=indices, rewards=rewards,
                        advantages=advantages, layout=curriculum.layout,
                        num_objectives=len(curriculum.objectives), **extra)


def hopeless_share_under_a_length_term(sampler: Any) -> float:
    """A closed loop of 40 steps, batch 16 x 8: d0 (indices 0-99) is hopeless (accuracy
    always 0), d1 half solved, and a length term to minimise varies in every group;
    weights [0.5, 0.5]. The mean probability `sampler` gives d0 over steps 20-39."""
    length: Any = {"name": "len", "direction": "minimize", "bounds": [0, 100]}
    cur = spec((100, 100), objective_names=("acc", length), sampler=sampler, batch_size=16,
               weighting={"kind": "fixed", "weights": [0.5, 0.5]})
    e = CurriculumEngine(cur)
    rng = np.random.default_rng(0)
    shares = []
    for step in range(40):
        batch = e.next_batch("r", step)
        if step >= 20:
            shares.append(float(batch.probabilities[0]))
        solvable = batch.indices >= 100
        acc = (rng.random((16, 8)) < 0.5) & solvable[:, None]
        lengths = rng.uniform(10, 90, (16, 8))
        e.apply(report(cur, batch.indices, np.stack([acc.astype(float), lengths], axis=-1),
                       step=step))
    return float(np.mean(shares))


def signals(curriculum: CurriculumSpec, indices: Sequence[int] | np.ndarray, rewards: Any,
            weights: Sequence[float] | None = None, advantages: Any = None,
            **extra: Any) -> ReportSignals:
    """ReportSignals for a dense report, with equal reward weights unless given."""
    k = len(curriculum.objectives)
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    return ReportSignals(report(curriculum, indices, rewards, advantages, **extra),
                         curriculum.layout, curriculum.objectives, curriculum.primary_index, w)


# ------------------------------------------------------------------ a service process
@dataclass
class ServiceProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path  # the process's stdout and stderr (access log, warnings, tracebacks)
    grpc_port: int | None = None

    @property
    def http(self) -> str:
        return self.url

    @property
    def grpc(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def endpoint(self, transport: str) -> str:
        """The URL a client of `transport` ("http" or "grpc") connects to."""
        return self.url if transport == "http" else self.grpc


def launch_service(database_url: str, log: Path, *, port: int | None = None,
                   env: Mapping[str, str] | None = None, grpc: bool = False,
                   ) -> ServiceProcess:
    """Start `python -m paceline_server serve` on `port` (a free one by default; pass the
    same port to restart a killed service), and a gRPC port too with `grpc`.

    Output goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server
    as soon as it logs enough (for instance a warning per failed request)."""
    port = port or free_port()
    grpc_port = free_port() if grpc else None
    args = ["--port", str(port)] + (["--grpc-port", str(grpc_port)] if grpc_port else [])
    environ = {**os.environ, "PACELINE_DATABASE_URL": database_url,
               "PACELINE_AUTO_MIGRATE": "true", **(env or {})}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "paceline_server", "serve", *args],
                                   env=environ, stdout=out, stderr=subprocess.STDOUT)
    return ServiceProcess(f"http://127.0.0.1:{port}", port, process, log, grpc_port)


def wait_ready(service: ServiceProcess, deadline: float,
               ready: Callable[[ServiceProcess], bool] | None = None) -> None:
    """Until /readyz answers 200 (and `ready` holds); RuntimeError with the log's tail
    when the process exits or the monotonic `deadline` passes first."""
    while True:
        try:
            up = httpx.get(f"{service.url}/readyz").status_code == 200
        except httpx.TransportError:
            up = False
        if up and (ready is None or ready(service)):
            return
        if service.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"service did not start: {service.log.read_text()[-2000:]}")
        time.sleep(0.05)


def stop_service(service: ServiceProcess, graceful: bool = False) -> None:
    """Kill the process, or with `graceful` let it shut down (killed after 10 s)."""
    process = service.process
    if process.poll() is None:
        if graceful:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        else:
            process.kill()
    process.wait()


@contextmanager
def running_service(database_url: str, *, port: int | None = None,
                    env: Mapping[str, str] | None = None, log: Path | None = None,
                    ready_within: float = 30.0, grpc: bool = False,
                    ready: Callable[[ServiceProcess], bool] | None = None,
                    graceful: bool = False) -> Iterator[ServiceProcess]:
    """A service process, ready when /readyz answers 200 (and `ready` holds); stopped on
    exit (killed, or shut down with `graceful`)."""
    with tempfile.TemporaryDirectory() as tmp:
        service = launch_service(database_url, log or Path(tmp) / "service.log", port=port,
                                 env=env, grpc=grpc)
        try:
            wait_ready(service, time.monotonic() + ready_within, ready)
            yield service
        finally:
            stop_service(service, graceful)


@contextmanager
def service_process(database_url: str, port: int | None = None,
                    env: Mapping[str, str] | None = None, log: Path | None = None,
                    ready_within: float = 30.0) -> Iterator[ServiceProcess]:
    """`running_service` with a snapshot every 4 events (restarts then load a snapshot
    and replay a tail), killed on exit."""
    with running_service(database_url, port=port, env={"PACELINE_SNAPSHOT_EVERY": "4",
                                                       **(env or {})},
                         log=log, ready_within=ready_within) as service:
        yield service


@contextmanager
def threaded_service(database_url: str, ready_within: float = 30.0,
                     **settings: Any) -> Iterator[str]:
    """The REST service (uvicorn, the same app `serve` runs) on a thread of this process,
    yielding its URL: real HTTP without a process start, for tests that compare what a
    client sees over HTTP with something in process. Stopped on exit."""
    import uvicorn

    from paceline_server.api.app import create_app
    from paceline_server.settings import Settings

    app = create_app(Settings(database_url=database_url, auto_migrate=True, **settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="threaded-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_within
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the threaded service did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def grpc_serving(target: str) -> bool:
    """The standard gRPC health check answers SERVING for the Paceline service."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="paceline.v1.Paceline"), timeout=1)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def start_service(db: Path, *, grpc: bool = False, **env: str) -> Iterator[ServiceProcess]:
    """`python -m paceline_server serve` on free ports and a SQLite file (with `grpc`, the
    gRPC API too), ready when /readyz (and the gRPC health check) answer; shut down
    gracefully on exit."""
    ready = (lambda s: grpc_serving(f"127.0.0.1:{s.grpc_port}")) if grpc else None
    with running_service(f"sqlite:///{db}", env=env, grpc=grpc, graceful=True,
                         ready=ready) as service:
        yield service


# ------------------------------------------------------------------ fault injection
@dataclass(frozen=True)
class Fault:
    """What to do to the next call that `target` names (a path suffix, or an RPC name for
    the gRPC tests' injectors):
    - `status`: answer this status without forwarding (the service never sees it);
    - `lost`: forward it (the service applies it), then lose the answer: reply `status`
      if given, else a read timeout;
    - `connect`: fail to connect, without forwarding."""

    target: str
    kind: str  # "status" | "lost" | "connect"
    status: int | None = None
    retry_after: str | None = None


def status(target: str, code: int, retry_after: str | None = None) -> Fault:
    return Fault(target, "status", code, retry_after)


def lost(target: str, code: int | None = None) -> Fault:
    return Fault(target, "lost", code)


def connect_error(target: str) -> Fault:
    return Fault(target, "connect")


@dataclass
class FaultPlan:
    """Faults waiting for their call, and every call's key seen so far. `match(key,
    target)` says whether a call concerns a fault's target (default: the path ends with
    it)."""

    match: Callable[[str, str], bool] = str.endswith
    faults: list[Fault] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def take(self, key: str) -> Fault | None:
        self.seen.append(key)
        for i, fault in enumerate(self.faults):
            if self.match(key, fault.target):
                return self.faults.pop(i)
        return None

    def count(self, target: str) -> int:
        return sum(1 for key in self.seen if self.match(key, target))


def refusal(fault: Fault, request: httpx.Request) -> httpx.Response:
    """The made-up answer of a `status` fault (a `lost` one with a status)."""
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    assert fault.status is not None
    return httpx.Response(fault.status, headers=headers, request=request, json={
        "error": {"code": "UNAVAILABLE", "message": "injected", "details": {}}})


def _path(request: httpx.Request) -> str:
    return request.url.path


class FaultInjector(httpx.BaseTransport):
    """An httpx transport in front of `inner` that misbehaves as planned, then passes
    through. Calls are keyed by `key(request)` (default: the URL path)."""

    def __init__(self, inner: httpx.BaseTransport | None = None, *,
                 key: Callable[[httpx.Request], str] = _path,
                 match: Callable[[str, str], bool] = str.endswith) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.key = key
        self.plan = FaultPlan(match)

    def inject(self, *faults: Fault) -> None:
        self.plan.inject(*faults)

    def count(self, target: str) -> int:
        return self.plan.count(target)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.take(self.key(request))
        if fault is None:
            return self.inner.handle_request(request)
        if fault.kind == "connect":
            raise httpx.ConnectError("injected connection failure", request=request)
        if fault.kind == "lost":
            response = self.inner.handle_request(request)
            response.read()
            response.close()
            if fault.status is None:
                raise httpx.ReadTimeout("injected: answer lost", request=request)
        return refusal(fault, request)

    def close(self) -> None:
        self.inner.close()


class AsyncFaultInjector(httpx.AsyncBaseTransport):
    """The asyncio twin of `FaultInjector`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *,
                 key: Callable[[httpx.Request], str] = _path,
                 match: Callable[[str, str], bool] = str.endswith) -> None:
        self.inner = inner
        self.key = key
        self.plan = FaultPlan(match)

    def inject(self, *faults: Fault) -> None:
        self.plan.inject(*faults)

    def count(self, target: str) -> int:
        return self.plan.count(target)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.take(self.key(request))
        if fault is None:
            return await self.inner.handle_async_request(request)
        if fault.kind == "connect":
            raise httpx.ConnectError("injected connection failure", request=request)
        if fault.kind == "lost":
            response = await self.inner.handle_async_request(request)
            await response.aread()
            await response.aclose()
            if fault.status is None:
                raise httpx.ReadTimeout("injected: answer lost", request=request)
        return refusal(fault, request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FreezingProxy:
    """A TCP proxy to `port` that, once frozen, swallows what clients send: the server
    never sees it, and no answer ever comes (a hung server, or a network that drops
    packets)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = []
        self.silent: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [conn, up]
            threading.Thread(target=self._pipe, args=(conn, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, conn, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    return
                if not (source in self.silent or (requests and self.frozen.is_set())):
                    sink.sendall(data)
            except OSError:
                return

    def freeze_open(self) -> None:
        """Silence the connections open now, both ways (a partition: nothing comes
        back either); later ones are forwarded."""
        self.silent.update(self.sockets)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with suppress(OSError):
                sock.close()
