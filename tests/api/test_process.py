"""A real uvicorn process: SIGKILL it after acknowledged reports and start it again; the
state and the next batch are exactly as before."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from api_support import SPEC
from paceline_server.domain import CurriculumSpec, Report
from paceline_server.engine import CurriculumEngine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(database_url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PACELINE_DATABASE_URL": database_url, "PACELINE_SNAPSHOT_EVERY": "4",
           "PACELINE_AUTO_MIGRATE": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "paceline_server", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {process.stderr.read()!r}"
                                   if process.stderr else "server did not start")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.mark.slow
def test_sigkill_and_restart_keeps_state_exact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'paceline.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1/curricula"
    with server(url, port) as process, httpx.Client(timeout=10) as http:
        assert http.post(base, json=SPEC).status_code == 201
        http.post(f"{base}/math/runs", json={"run_id": "run-1"})
        reports = []
        for step in range(6):
            batch = http.post(f"{base}/math/batches", json={"run_id": "run-1", "step": step})
            indices = batch.json()["indices"]
            rewards = [[[float((i + step) % 2), 10.0]] * 4 for i in indices]
            body = {"run_id": "run-1", "step": step, "indices": indices, "rewards": rewards}
            reports.append(body)
            ack = http.post(f"{base}/math/reports", json=body)
            assert ack.json()["seq"] == step + 1
        state = http.get(f"{base}/math/state").json()
        process.send_signal(signal.SIGKILL)
    with server(url, port), httpx.Client(timeout=10) as http:
        assert http.get(f"{base}/math/state").json() == state
        again = http.post(f"{base}/math/batches", json={"run_id": "run-1", "step": 6})
        assert again.status_code == 200
        assert again.json()["seq"] == 6
    # The batch is the one the engine computes from the same ordered reports.
    spec = CurriculumSpec.from_dict(SPEC)
    engine = CurriculumEngine(spec)
    for body in reports:
        engine.apply(Report.dense(layout=spec.layout, num_objectives=2, **body))
    assert again.json()["indices"] == engine.next_batch("run-1", 6).indices.tolist()
