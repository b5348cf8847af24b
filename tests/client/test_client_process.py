"""The client against a real uvicorn process, with faults injected between the two:
answers refused (503, 429) or lost after the service applied the request, and connection
failures. Every report must be applied exactly once."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import paceline
from paceline import _transport
from support import CLIENT_SPEC as SPEC
from support import (
    FaultInjector,
    ServiceProcess,
    connect_error,
    free_port,
    lost,
    start_service,
    status,
)

pytestmark = pytest.mark.slow

FAST = paceline.RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05)
_names = itertools.count()


@pytest.fixture
def faults() -> FaultInjector:
    return FaultInjector()


@pytest.fixture
def client(service: ServiceProcess, faults: FaultInjector) -> Iterator[paceline.Client]:
    with paceline.Client(service.url, transport=faults, retries=FAST, timeout=10) as c:
        yield c


@pytest.fixture
def run(client: paceline.Client) -> paceline.Run:
    """A run on a fresh curriculum (the service process is shared by the module)."""
    cur = client.create_curriculum(f"math-{next(_names)}", **SPEC)
    return cur.start_run(run_id="run-1", heartbeat_interval=None)


def report(run: paceline.Run, step: int) -> paceline.ReportAck:
    indices = run.next_batch(step).indices
    rewards = [[[float((i + j) % 2), 10.0 * j] for j in range(4)] for i in indices]
    return run.report(step, indices, rewards)


def test_full_cycle(client: paceline.Client) -> None:
    cur = client.create_curriculum("cycle", **SPEC, exist_ok=True)
    assert client.curriculum("cycle").info == cur.info
    with cur.start_run(heartbeat_interval=0.05) as run:
        for step in range(3):
            assert report(run, step).seq == step + 1
    state = cur.state()
    assert state.seq == 3
    assert sum(d.sampled for d in state.distributions) == 24
    assert "cycle" in [c.name for c in client.list_curricula()]


def test_503_then_success_applies_the_report_once(run: paceline.Run,
                                                  faults: FaultInjector) -> None:
    faults.inject(status("/reports", 503, retry_after="0"))
    ack = report(run, 0)
    assert (ack.seq, ack.replayed) == (1, False)
    assert faults.count("/reports") == 2
    assert run.curriculum.state().seq == 1


def test_lost_answers_are_replayed_not_reapplied(run: paceline.Run,
                                                 faults: FaultInjector) -> None:
    faults.inject(lost("/reports", 502), lost("/reports"))  # a 502, then a read timeout
    ack = report(run, 0)
    assert (ack.seq, ack.replayed) == (1, True)
    assert faults.count("/reports") == 3
    assert report(run, 1).seq == 2
    state = run.curriculum.state()
    assert state.seq == 2
    assert sum(d.sampled for d in state.distributions) == 16


def test_connection_error_then_success(run: paceline.Run, faults: FaultInjector) -> None:
    faults.inject(connect_error("/batches"), connect_error("/batches"))
    assert len(run.next_batch(0).indices) == 8
    assert faults.count("/batches") == 3


def test_429_honours_retry_after(run: paceline.Run, faults: FaultInjector,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(_transport, "_sleep", lambda seconds, *_: slept.append(seconds))
    faults.inject(status("/batches", 429, retry_after="2"), status("/batches", 503))
    run.next_batch(0)
    assert slept[0] == 2.0
    assert 0.0 <= slept[1] <= 0.02  # no Retry-After: jittered backoff, second retry


def test_client_errors_are_not_retried(run: paceline.Run, faults: FaultInjector) -> None:
    with pytest.raises(paceline.InvalidInput) as info:
        run.report(0, indices=[1000], rewards=[[[1.0, 1.0]]])
    assert (info.value.code, info.value.status) == ("INDEX_OUT_OF_RANGE", 422)
    assert faults.count("/reports") == 1


def test_retries_run_out(run: paceline.Run, faults: FaultInjector) -> None:
    faults.inject(*[status("/state", 503, retry_after="0")] * 4)
    with pytest.raises(paceline.Unavailable) as info:
        run.curriculum.state()
    assert info.value.status == 503
    assert faults.count("/state") == 4


def test_lost_create_and_delete_answers(client: paceline.Client,
                                        faults: FaultInjector) -> None:
    faults.inject(lost("/v1/curricula", 502))
    cur = client.create_curriculum("lost-create", **SPEC)  # the retry sees 409 same spec
    assert cur.name == "lost-create"
    assert faults.count("/v1/curricula") == 2
    faults.inject(lost("/lost-create"))
    cur.delete()  # the retry sees 404: the lost attempt deleted it
    with pytest.raises(paceline.NotFound):
        client.curriculum("lost-create")


def test_resuming_a_run(client: paceline.Client) -> None:
    cur = client.create_curriculum("resume", **SPEC)
    first = cur.start_run(run_id="trainer-0", heartbeat_interval=None)
    batch = first.next_batch(5)
    again = cur.start_run(run_id="trainer-0", heartbeat_interval=None)
    assert again.next_batch(5) == batch
    assert [r.run_id for r in cur.runs()] == ["trainer-0"]


def test_no_service(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with paceline.Client(url, retries=FAST) as client, \
            pytest.raises(paceline.TransportError) as info:
        client.list_curricula()
    assert info.value.code == "CONNECTION_ERROR"
    assert info.value.details == {"attempts": 4}


def test_authentication(tmp_path: Path) -> None:
    tokens = '{"reader": "read", "writer": "write"}'
    with start_service(tmp_path / "auth.db", PACELINE_API_TOKENS=tokens) as service:
        kwargs: dict[str, Any] = {"retries": FAST}
        with paceline.Client(service.url, **kwargs) as anonymous, \
                pytest.raises(paceline.AuthError) as missing:
            anonymous.list_curricula()
        assert (missing.value.code, missing.value.status) == ("UNAUTHENTICATED", 401)
        with paceline.Client(service.url, token="reader", **kwargs) as reader:
            assert reader.list_curricula() == []
            with pytest.raises(paceline.AuthError) as denied:
                reader.create_curriculum("math", **SPEC)
            assert denied.value.code == "FORBIDDEN"
        with paceline.Client(service.url, token="writer", **kwargs) as writer:
            assert writer.create_curriculum("math", **SPEC).name == "math"
