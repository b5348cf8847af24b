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
from collections.abc import Iterator, Mapping
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


@contextmanager
def service_process(database_url: str, port: int | None = None,
                    env: Mapping[str, str] | None = None, log: Path | None = None,
                    ready_within: float = 30.0) -> Iterator[ServiceProcess]:
    """`python -m paceline_server serve` on `port` (a free one by default; pass the same
    port to restart a killed service), ready when /readyz answers 200; killed on exit.

    Output goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server
    as soon as it logs enough (for instance a warning per failed request)."""
    port = port or free_port()
    environ = {**os.environ, "PACELINE_DATABASE_URL": database_url,
               "PACELINE_SNAPSHOT_EVERY": "4", "PACELINE_AUTO_MIGRATE": "true", **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = log or Path(tmp) / "service.log"
        with open(path, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "paceline_server", "serve", "--port", str(port)],
                env=environ, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_within
            while True:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"service did not start: {path.read_text()[-2000:]}")
                time.sleep(0.05)
            yield ServiceProcess(url, port, process, path)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
