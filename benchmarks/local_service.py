"""What the service benchmarks run against: `paceline-server serve` processes on free
loopback ports, and scratch PostgreSQL schemas. The server runs this checkout's code
(its `service/` and `client/` come after any PYTHONPATH already set, so a caller can
point a run at another checkout)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int, children: bool = False) -> float | None:
    """utime + stime of a process from /proc/PID/stat (None when it is gone or there is
    no /proc); with `children`, plus those of its exited children."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class LocalService:
    url: str
    process: subprocess.Popen[bytes]
    grpc_target: str | None = None  # host:port of the gRPC API, when started with it


def launch(database_url: str, env: Mapping[str, str] | None = None,
           grpc: bool = False) -> LocalService:
    """Start a server (warnings only in its log, on this process's stderr)."""
    port = free_port()
    grpc_port = free_port() if grpc else None
    args = ["--port", str(port)] + (["--grpc-port", str(grpc_port)] if grpc_port else [])
    path = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "service"),
                        str(ROOT / "client")) if p]
    environ = {**os.environ, "PACELINE_DATABASE_URL": database_url,
               "PACELINE_AUTO_MIGRATE": "true", "PACELINE_LOG_LEVEL": "warning",
               "PYTHONPATH": os.pathsep.join(path), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "paceline_server", "serve", *args],
                               env=environ)
    return LocalService(f"http://127.0.0.1:{port}", process,
                        None if grpc_port is None else f"127.0.0.1:{grpc_port}")


def wait_ready(service: LocalService, within: float = 60.0) -> None:
    """Until /readyz answers 200 (and the gRPC port answers, if any)."""
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(f"{service.url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if service.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"paceline-server at {service.url} did not start "
                               f"(exit {service.process.poll()})")
        time.sleep(0.1)
    if service.grpc_target is not None:
        import paceline

        with paceline.Client(f"grpc://{service.grpc_target}", retries=8) as probe:
            probe.list_curricula()  # retries until the gRPC port answers


def stop(service: LocalService) -> None:
    service.process.terminate()
    try:
        service.process.wait(10)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()


@contextmanager
def local_service(database_url: str, env: Mapping[str, str] | None = None,
                  grpc: bool = False) -> Iterator[LocalService]:
    """A ready server, stopped on exit."""
    service = launch(database_url, env, grpc)
    try:
        wait_ready(service)
        yield service
    finally:
        stop(service)


@contextmanager
def pg_schema(prefix: str = "bench") -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
