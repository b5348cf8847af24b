"""Isolation in group commit: a report that fails inside the shared transaction is
answered with its own error and its neighbours are committed without it, on SQLite and
PostgreSQL.

The transports refuse the poisons used here (a lone-surrogate or NUL idempotency key)
before anything is queued, so these tests hand them to the group commit directly, as a
report that only the database can refuse would arrive; `test_hostile_input` checks the
transports' refusal end to end.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.app.codec import decode_report
from paceline_server.app.service import PacelineService
from paceline_server.domain.errors import Unavailable
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC

#: A lone surrogate cannot be encoded by either driver; PostgreSQL text cannot hold NUL
#: (SQLite stores it, so there it is no poison).
POISONS = ["\ud800", "nul\x00key"]


def poisonous(poison: str, service: PacelineService) -> None:
    if "\x00" in poison and service.settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite stores NUL in text")


def body(service: PacelineService, run: str, step: int) -> dict[str, Any]:
    """A report of the batch served to (run, step)."""
    indices = service.next_batch("math", run, step).indices.tolist()
    return {"run_id": run, "step": step, "indices": indices,
            "rewards": [[[1.0, 10.0], [0.0, 20.0]] for _ in indices]}


@pytest.fixture
def service(database_url: str) -> Iterator[PacelineService]:
    store = open_store(database_url, auto_migrate=True)
    service = PacelineService(store, Settings(database_url=database_url))
    service.create_curriculum(SPEC)
    for run in ("r0", "r1", "r2", "r3", "bad"):
        service.attach_run("math", run_id=run)
    yield service
    service.close()
    store.close()


def logged_keys(service: PacelineService) -> list[str | None]:
    events = list(service.store.events("math"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for event in events:
        decode_report(event.payload)  # every stored row can be read back
    return [e.idempotency_key for e in events]


@pytest.mark.parametrize("poison", POISONS, ids=["lone-surrogate", "nul"])
def test_a_poisoned_report_fails_alone_inside_one_group(service: PacelineService,
                                                        poison: str) -> None:
    poisonous(poison, service)
    cached = service.engine("math")
    items = [service._prepare(cached, body(service, run, 1), key, None)
             for run, key in [("r0", "k0"), ("r1", "k1"), ("bad", poison), ("r2", "k2"),
                              ("r3", "k3")]]
    cached.pending.extend(items)  # one group, the poison in the middle
    with cached.commit_lock:
        service.commits.commit_pending("math", cached)
    assert all(item.done for item in items)
    honest = [items[i] for i in (0, 1, 3, 4)]
    assert [item.error for item in honest] == [None] * 4
    assert [item.ack.seq for item in honest if item.ack] == [1, 2, 3, 4]
    assert items[2].ack is None and items[2].error is not None
    assert logged_keys(service) == ["k0", "k1", "k2", "k3"]
    # The cached engine equals a fresh load of the log.
    assert service.engine("math").engine.to_bytes() == PacelineService(
        service.store, service.settings).engine("math").engine.to_bytes()


@pytest.mark.parametrize("poison", POISONS, ids=["lone-surrogate", "nul"])
def test_concurrent_honest_reports_never_fail_with_a_poisoned_one(
        service: PacelineService, poison: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 honest trainers x 30 reports and one sending poisoned keys, all at once: 0
    honest failures, every honest report in the log once, no poisoned one."""
    poisonous(poison, service)
    monkeypatch.setattr(service, "_check_key", lambda key: None)  # let it reach the store
    failures: list[BaseException] = []
    poisoned: list[str] = []
    start = threading.Barrier(5)

    def honest(run: str) -> None:
        start.wait()
        for step in range(30):
            try:
                service.report("math", body(service, run, step),
                               idempotency_key=f"{run}-{step}")
            except BaseException as exc:
                failures.append(exc)

    def hostile() -> None:
        start.wait()
        for step in range(30):
            try:
                service.report("math", body(service, "bad", step),
                               idempotency_key=f"{poison}{step}")
            except Exception as exc:
                poisoned.append(type(exc).__name__)

    threads = [threading.Thread(target=honest, args=(f"r{i}",)) for i in range(4)]
    threads.append(threading.Thread(target=hostile))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert len(poisoned) == 30
    keys = logged_keys(service)
    assert sorted(k for k in keys if k is not None) == sorted(
        f"r{i}-{s}" for i in range(4) for s in range(30))


def test_a_database_failure_still_fails_the_whole_group(service: PacelineService,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """What no single report caused (here the database going away at the second
    report's insert) fails every report of the group, and none is retried."""
    cached = service.engine("math")
    items = [service._prepare(cached, body(service, f"r{i}", 1), f"k{i}", None)
             for i in range(3)]
    cached.pending.extend(items)
    real_append = service.commits._append
    calls: list[int] = []

    def failing_append(writer: Any, entry: Any, item: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise Unavailable("database unavailable: injected", {})
        return real_append(writer, entry, item)

    monkeypatch.setattr(service.commits, "_append", failing_append)
    with cached.commit_lock:
        service.commits.commit_pending("math", cached)
    assert len(calls) == 2
    assert all(isinstance(item.error, Unavailable) for item in items)
    assert logged_keys(service) == []


def test_poisoned_requests_over_rest_and_grpc_fail_no_honest_trainer(database_url: str) -> None:
    """The issue's scenario end to end: 4 trainers report concurrently over REST while
    another sends a lone-surrogate idempotency key over REST and a NUL one over gRPC, to
    the same service: every poisoned request is a 4xx / INVALID_ARGUMENT of its own, and
    0 of the 4 x 15 honest reports fail."""
    client: TestClient = make_client(database_url)
    with client:
        service: PacelineService = client.app.state.service  # type: ignore[attr-defined]
        server = create_server(service, service.settings, port=0, host="127.0.0.1")
        server.start()
        assert client.post("/v1/curricula", json=SPEC).status_code == 201
        runs = ["r0", "r1", "r2", "r3", "bad"]
        for run in runs:
            assert client.post("/v1/curricula/math/runs", json={"run_id": run}).status_code == 201
        honest_failures: list[str] = []
        poisoned: list[str] = []
        start = threading.Barrier(5)

        def honest(run: str) -> None:
            start.wait()
            for step in range(15):
                batch = client.post("/v1/curricula/math/batches",
                                    json={"run_id": run, "step": step}).json()
                answer = client.post("/v1/curricula/math/reports", json={
                    "run_id": run, "step": step, "indices": batch["indices"],
                    "rewards": [[[1.0, 4.0], [0.0, 2.0]] for _ in batch["indices"]],
                    "idempotency_key": f"{run}-{step}"})
                if answer.status_code != 200:
                    honest_failures.append(answer.text)

        def hostile() -> None:
            start.wait()
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                report = channel.unary_unary(
                    "/paceline.v1.Paceline/Report",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=pb.ReportAck.FromString)
                for step in range(15):
                    batch = client.post("/v1/curricula/math/batches",
                                        json={"run_id": "bad", "step": step}).json()
                    body = {"run_id": "bad", "step": step, "indices": batch["indices"],
                            "rewards": [[[1.0, 4.0]] for _ in batch["indices"]],
                            "idempotency_key": "KEY"}
                    raw = json.dumps(body).replace('"KEY"', '"\\ud800"')
                    answer = client.post("/v1/curricula/math/reports", content=raw,
                                         headers={"Content-Type": "application/json"})
                    poisoned.append(answer.json()["error"]["code"])
                    try:
                        report(pb.ReportRequest(
                            curriculum="math", run_id="bad", step=step,
                            indices=batch["indices"], idempotency_key=f"nul\x00{step}",
                            rewards=pb.Array(shape=[len(batch["indices"]), 1, 2],
                                             f64=[1.0, 4.0] * len(batch["indices"]))),
                               timeout=10)
                        poisoned.append("accepted")
                    except grpc.RpcError as exc:
                        poisoned.append(exc.code().name)  # type: ignore[attr-defined]

        threads = [threading.Thread(target=honest, args=(run,)) for run in runs[:4]]
        threads.append(threading.Thread(target=hostile))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        server.stop(0)
        assert honest_failures == []
        assert sorted(set(poisoned)) == ["INVALID_ARGUMENT", "INVALID_REQUEST"]
        keys = logged_keys(service)
        assert sorted(k for k in keys if k is not None) == sorted(
            f"r{i}-{s}" for i in range(4) for s in range(15))
