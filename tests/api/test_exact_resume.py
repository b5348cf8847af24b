"""Exact resume: a (run, step) is folded once, and only what Paceline served is folded.

The rule (docs/integrations.md, "Resuming without double counting"): a repeated report
for an already-reported (run, step) returns the original acknowledgement when its content
is the same, whatever idempotency key it carries, and is refused with 409 REPORT_CONFLICT
when the content differs; a report for a step never served, or naming indices that step
was not served, is refused with 409 NOT_SERVED / INDICES_NOT_SERVED unless it says
`unserved: "accept"`. Every refusal leaves the curriculum untouched. SQLite and
PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from paceline_server.app.engines import SERVED_RUNS
from paceline_server.app.group_commit import NextBatch
from paceline_server.app.service import PacelineService
from paceline_server.domain.errors import IndicesNotServed, ReportConflict, Unavailable
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.sql import _SqlWriter
from support import SPEC

URL = "/v1/curricula/math"


def setup(client: TestClient) -> None:
    assert client.post("/v1/curricula", json=SPEC).status_code == 201
    assert client.post(f"{URL}/runs", json={"run_id": "run-1"}).status_code == 201


def served(client: TestClient, step: int) -> list[int]:
    batch = client.post(f"{URL}/batches", json={"run_id": "run-1", "step": step}).json()
    return list(batch["indices"])


def report(indices: list[int], step: int, seed: int = 0, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rewards = np.stack([rng.integers(0, 2, (len(indices), 4)),
                        rng.integers(0, 100, (len(indices), 4))], axis=-1)
    return {"run_id": "run-1", "step": step, "indices": indices,
            "rewards": rewards.astype(float).tolist(), **extra}


def head(client: TestClient) -> int:
    return int(client.get(f"{URL}/state").json()["seq"])


def code(response: Any) -> str:
    return str(response.json()["error"]["code"])


def test_a_repeated_step_is_answered_with_its_first_ack_whatever_the_key(
        client: TestClient) -> None:
    setup(client)
    indices = served(client, 0)
    first = client.post(f"{URL}/reports", json=report(indices, 0),
                        headers={"Idempotency-Key": "first-try"})
    assert first.json() == {"seq": 1, "replayed": False}
    state = client.get(f"{URL}/state").json()
    for key in ("a-random-key", None):  # another key, or none at all
        headers = {} if key is None else {"Idempotency-Key": key}
        again = client.post(f"{URL}/reports", json=report(indices, 0), headers=headers)
        assert again.status_code == 200
        assert again.json() == {"seq": 1, "replayed": True}
    assert client.get(f"{URL}/state").json() == state  # folded once


def test_a_repeated_step_with_next_step_returns_the_stored_next_batch(
        client: TestClient) -> None:
    setup(client)
    indices = served(client, 0)
    first = client.post(f"{URL}/reports?next_step=1", json=report(indices, 0)).json()
    again = client.post(f"{URL}/reports?next_step=1", json=report(indices, 0)).json()
    assert again["replayed"] and again["seq"] == first["seq"] == 1
    assert again["batch"] == first["batch"]


def test_different_content_for_a_reported_step_is_a_conflict(client: TestClient) -> None:
    setup(client)
    indices = served(client, 0)
    client.post(f"{URL}/reports", json=report(indices, 0, seed=0))
    state = client.get(f"{URL}/state").json()
    other = client.post(f"{URL}/reports", json=report(indices, 0, seed=1),
                        headers={"Idempotency-Key": "resumed"})
    assert other.status_code == 409
    assert code(other) == "REPORT_CONFLICT"
    assert other.json()["error"]["details"] == {"run_id": "run-1", "step": 0, "seq": 1}
    assert client.get(f"{URL}/state").json() == state
    # the refused key was not used up: it can carry the next step
    follow = client.post(f"{URL}/reports", json=report(served(client, 1), 1),
                         headers={"Idempotency-Key": "resumed"})
    assert follow.json() == {"seq": 2, "replayed": False}


def test_a_step_never_served_is_refused_by_default(client: TestClient) -> None:
    setup(client)
    refused = client.post(f"{URL}/reports", json=report([1, 2, 3], 5))
    assert refused.status_code == 409
    assert code(refused) == "NOT_SERVED"
    assert refused.json()["error"]["details"] == {"run_id": "run-1", "step": 5}
    assert "unserved" in refused.json()["error"]["message"]
    assert head(client) == 0


def test_indices_the_step_was_not_served_are_refused(client: TestClient) -> None:
    setup(client)
    indices = served(client, 0)
    foreign = sorted(set(range(100)) - set(indices))[:2]
    refused = client.post(f"{URL}/reports", json=report(indices[:-2] + foreign, 0))
    assert refused.status_code == 409
    assert code(refused) == "INDICES_NOT_SERVED"
    details = refused.json()["error"]["details"]
    assert details["not_served"] == foreign and details["count"] == 2
    assert head(client) == 0
    # a subset of the served batch is fine (a trainer may drop a prompt)
    assert client.post(f"{URL}/reports", json=report(indices[:3], 0)).json()["seq"] == 1


def test_unserved_accept_folds_a_trainers_own_steps_once(client: TestClient) -> None:
    setup(client)
    own = report([1, 2, 3], 7, unserved="accept")
    assert client.post(f"{URL}/reports", json=own).json() == {"seq": 1, "replayed": False}
    assert client.post(f"{URL}/reports", json=own).json() == {"seq": 1, "replayed": True}
    changed = client.post(f"{URL}/reports", json=report([1, 2, 3], 7, seed=3,
                                                         unserved="accept"))
    assert code(changed) == "REPORT_CONFLICT"
    # "accept" also lets indices outside a served step through
    indices = served(client, 8)
    outside = sorted(set(range(100)) - set(indices))[:1]
    mixed = client.post(f"{URL}/reports", json=report(indices[:2] + outside, 8,
                                                      unserved="accept"))
    assert mixed.json()["seq"] == 2
    explicit = client.post(f"{URL}/reports", json=report([4], 9, unserved="refuse"))
    assert code(explicit) == "NOT_SERVED"


@pytest.mark.parametrize("value", ["yes", True, 1, None])
def test_a_bad_unserved_value_is_invalid(client: TestClient, value: Any) -> None:
    setup(client)
    response = client.post(f"{URL}/reports", json=report([1], 0, unserved=value))
    assert response.status_code == 422
    assert code(response) == "INVALID_REPORT"
    assert head(client) == 0


def test_concurrent_repeats_of_one_step_fold_it_once(tmp_path: Any) -> None:
    """Requests for one (run, step) under different keys, sent at once (committed in one
    group or one after the other): one fold, every one answered with its seq."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = open_store(url, auto_migrate=True)
    service = PacelineService(store, Settings(database_url=url))
    try:
        service.create_curriculum(SPEC)
        service.attach_run("math", run_id="r")
        indices = service.next_batch("math", "r", 0).indices.tolist()
        body = {**report(indices, 0), "run_id": "r"}
        acks: dict[str, Any] = {}
        threads = [threading.Thread(
            target=lambda key=f"k{i}": acks.__setitem__(key, service.report("math", body, key)))
            for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {ack.seq for ack in acks.values()} == {1} and len(acks) == 6
        assert sum(not ack.replayed for ack in acks.values()) == 1
        assert store.head("math").head_seq == 1
        with pytest.raises(ReportConflict):
            service.report("math", {**report(indices, 0, seed=5), "run_id": "r"}, "odd")
        assert store.head("math").head_seq == 1
    finally:
        service.close()
        store.close()


@pytest.fixture
def service(tmp_path: Any) -> Iterator[PacelineService]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url, auto_migrate=True)
    made = PacelineService(store, Settings(database_url=url))
    made.create_curriculum(SPEC)
    made.attach_run("math", run_id="r")
    try:
        yield made
    finally:
        made.close()
        store.close()


def remembered(service: PacelineService, step: int) -> list[int] | None:
    cached = service.engines.recent("math")
    assert cached is not None
    known = cached.served_batch("r", step)
    return None if known is None else known.tolist()


def test_a_committed_batch_is_remembered_and_reports_are_still_checked(
        service: PacelineService) -> None:
    """The served check reads a batch this process stored from memory (no query on
    the report path); what it answers must be exactly what the store would."""
    first = service.next_batch("math", "r", 0).indices.tolist()
    assert remembered(service, 0) == sorted(first)
    ack = service.report("math", {**report(first, 0), "run_id": "r"},
                         next_batch=NextBatch(1))
    assert ack.batch is not None
    second = ack.batch.indices.tolist()
    assert remembered(service, 1) == sorted(second) and remembered(service, 0) is None
    outside = next(i for i in range(100) if i not in second)
    with pytest.raises(IndicesNotServed):
        service.report("math", {**report([*second[:-1], outside], 1), "run_id": "r"})
    # A refill part's indices are not in the remembered batch: the store answers.
    part = service.refill("math", "r", 1, 1, size=2).indices.tolist()
    ack = service.report("math", {**report([*second, *part], 1), "run_id": "r"})
    assert not ack.replayed and service.store.head("math").head_seq == 2


def test_a_batch_is_not_remembered_when_its_transaction_fails(
        service: PacelineService, monkeypatch: pytest.MonkeyPatch) -> None:
    first = service.next_batch("math", "r", 0).indices.tolist()

    def failing_commit(self: Any) -> None:
        raise Unavailable("database unavailable: injected", {})

    monkeypatch.setattr(_SqlWriter, "_finish", failing_commit)
    with pytest.raises(Unavailable):
        service.report("math", {**report(first, 0), "run_id": "r"}, next_batch=NextBatch(1))
    assert remembered(service, 1) is None and remembered(service, 0) == sorted(first)
    monkeypatch.undo()
    ack = service.report("math", {**report(first, 0), "run_id": "r"}, next_batch=NextBatch(1))
    assert ack.batch is not None and remembered(service, 1) == sorted(ack.batch.indices.tolist())


def test_remembered_batches_are_bounded_by_run(service: PacelineService) -> None:
    service.next_batch("math", "r", 0)
    cached = service.engines.recent("math")
    assert cached is not None
    for n in range(SERVED_RUNS):
        cached.remember_served(f"other-{n}", 0, np.arange(3))
    assert len(cached.served) == SERVED_RUNS and remembered(service, 0) is None
    assert cached.served_batch(f"other-{SERVED_RUNS - 1}", 0) is not None
    assert cached.served_batch(f"other-{SERVED_RUNS - 1}", 1) is None
