"""A real uvicorn process: SIGKILL it after acknowledged reports and start it again; the
state and the next batch are exactly as before."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from paceline_server.domain import CurriculumSpec, Report
from paceline_server.engine import CurriculumEngine
from support import SPEC, free_port, service_process


@pytest.mark.slow
def test_sigkill_and_restart_keeps_state_exact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'paceline.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1/curricula"
    with service_process(url, port) as service, httpx.Client(timeout=10) as http:
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
        service.process.send_signal(signal.SIGKILL)
    with service_process(url, port), httpx.Client(timeout=10) as http:
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


def test_the_served_process_refuses_a_rebound_host(tmp_path: Path) -> None:
    """`serve` on 127.0.0.1 without tokens (its defaults), over real HTTP: a page whose
    name was pointed at 127.0.0.1 (DNS rebinding) sends its own name as Host."""
    from support import running_service

    with running_service(f"sqlite:///{tmp_path / 'h.db'}") as service, \
            httpx.Client(base_url=service.url, timeout=10) as http:
        assert http.get("/v1/curricula").status_code == 200
        assert http.get("/v1/curricula", headers={"Host": f"localhost:{service.port}"}
                        ).status_code == 200
        rebound = http.get("/ui/api/overview",
                           headers={"Host": f"evil.example:{service.port}"})
    assert rebound.status_code == 421, rebound.text
    assert rebound.json()["error"]["code"] == "HOST_NOT_ALLOWED"


def test_grpc_beside_several_workers_warns_that_it_is_not_counted(tmp_path: Path) -> None:
    """With --workers > 1 the gRPC API runs in the parent process, which serves no
    /metrics: the server says so at start, and both APIs still answer."""
    from paceline_server.cli import UNCOUNTED_GRPC
    from support import running_service

    with running_service(f"sqlite:///{tmp_path / 'w.db'}", grpc=True, graceful=True,
                         env={"PACELINE_WORKERS": "2"}, log=tmp_path / "w.log") as service:
        assert httpx.get(f"{service.url}/v1/strategies", timeout=10).status_code == 200
        import paceline

        with paceline.Client(service.grpc) as client:
            assert client.strategies().samplers
    assert UNCOUNTED_GRPC in (tmp_path / "w.log").read_text()


def test_sigterm_stops_through_the_cleanup(tmp_path: Path) -> None:
    """uvicorn shuts down on SIGTERM and raises it again, which killed `serve` (-15)
    before the gRPC server was drained and the store closed; now it exits 0 with both
    done (closing SQLite's last connection folds the WAL back and removes it)."""
    from support import launch_service, wait_ready

    db = tmp_path / "t.db"
    service = launch_service(f"sqlite:///{db}", tmp_path / "t.log", grpc=True)
    try:
        wait_ready(service, time.monotonic() + 60)
        assert httpx.post(f"{service.url}/v1/curricula", json=SPEC,
                          timeout=10).status_code == 201
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(30) == 0, (tmp_path / "t.log").read_text()[-2000:]
    finally:
        if service.process.poll() is None:
            service.process.kill()
    assert db.exists() and not (tmp_path / "t.db-wal").exists()
