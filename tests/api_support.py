"""Helpers for API tests: app clients on fresh databases, a real service process and a
sample spec."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from paceline_server.api.app import create_app
from paceline_server.settings import Settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_client(url: str, **settings: Any) -> TestClient:
    app = create_app(Settings(database_url=url, auto_migrate=True, **settings))
    return TestClient(app)


SPEC: dict[str, Any] = {
    "name": "math",
    "layout": {"distributions": [{"name": "easy", "size": 60}, {"name": "hard", "size": 40}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "uniform",
    "weighting": {"kind": "fixed", "weights": [3, 1]},
    "batch_size": 8,
    "seed": 1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path  # the process's stdout and stderr (access log, warnings, tracebacks)
    grpc_port: int | None = None

    @property
    def grpc(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"


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
