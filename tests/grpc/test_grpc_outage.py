"""After an outage the gRPC client's retries reach the server as soon as it is back, as
HTTP's do. gRPC reconnects on its own backoff (1 s growing to 120 s, shared by the
process's channels), and until its timer fires a call fails at once without trying: after
a 20 s outage every retry was spent that way for seconds after the restart, and the call
ended in CONNECTION_ERROR although the server was up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import paceline
from support import launch_service, stop_service, wait_ready

pytestmark = pytest.mark.slow


def test_a_retry_after_a_long_outage_reaches_the_restarted_server(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'o.db'}"
    first = launch_service(database, tmp_path / "first.log", grpc=True)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(first, time.monotonic() + 60)
        with paceline.Client(f"grpc://127.0.0.1:{first.grpc_port}", timeout=2) as client:
            cur = client.create_curriculum("m", {"a": 50}, objectives=["acc"], batch_size=4)
            run = cur.start_run("r", heartbeat_interval=0.5)  # keeps the channel trying
            stop_service(first)
            time.sleep(20)
            with open(tmp_path / "second.log", "wb") as log:
                restarted = subprocess.Popen(
                    [sys.executable, "-m", "paceline_server", "serve", "--port",
                     str(first.port), "--grpc-port", str(first.grpc_port)],
                    env={**os.environ, "PACELINE_DATABASE_URL": database},
                    stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while not _ready(first.url):
                assert time.monotonic() < deadline, (tmp_path / "second.log").read_text()
                time.sleep(0.05)
            start = time.monotonic()
            batch = run.next_batch(0)  # raised CONNECTION_ERROR after 3.5 s of retries
            assert len(batch.indices) == 4 and time.monotonic() - start < 3.0
            run.close()
    finally:
        stop_service(first)
        if restarted is not None:
            restarted.terminate()
            restarted.wait(30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
