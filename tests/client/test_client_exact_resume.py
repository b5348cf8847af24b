"""Exact resume through the client, on every transport (embedded, REST, gRPC): a step is
folded once whatever key re-sends it, different content for it is a `Conflict`, and a
step or indices Paceline did not serve are refused unless `unserved="accept"`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import paceline
from support import CLIENT_SPEC as SPEC
from support import running_service

_names = itertools.count()


@pytest.fixture(scope="module")
def grpc_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("resume") / "paceline.db"
    with running_service(f"sqlite:///{db}", grpc=True, graceful=True) as service:
        yield service.grpc + "|" + service.url


@pytest.fixture(params=["embedded", "rest", "grpc"])
def client(request: pytest.FixtureRequest, tmp_path: Path,
           grpc_service: str) -> Iterator[paceline.Client]:
    grpc_url, rest_url = grpc_service.split("|")
    if request.param == "embedded":
        with paceline.Client.embedded(tmp_path / "p.db") as c:
            yield c
    else:
        with paceline.Client(grpc_url if request.param == "grpc" else rest_url) as c:
            yield c


def rewards(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 2, (n, 4)), rng.integers(0, 100, (n, 4))],
                    axis=-1).astype(float)


def test_exact_resume_rules(client: paceline.Client) -> None:
    curriculum = client.create_curriculum(f"resume-{next(_names)}", **SPEC)
    with curriculum.start_run("r", heartbeat_interval=None) as run:
        indices = np.array(run.next_batch(0).indices)
        n = indices.size
        first = run.report(0, indices, rewards(n, 0), idempotency_key="r/0")
        again = run.report(0, indices, rewards(n, 0))  # a fresh random key
        assert (first.seq, first.replayed) == (1, False)
        assert (again.seq, again.replayed) == (1, True)
        with pytest.raises(paceline.Conflict) as conflict:
            run.report(0, indices, rewards(n, 1))
        assert conflict.value.code == "REPORT_CONFLICT"
        with pytest.raises(paceline.Conflict) as never:
            run.report(3, [1, 2], rewards(2, 0))
        assert never.value.code == "NOT_SERVED"
        outside = np.setdiff1d(np.arange(100), indices)[:1]
        served = np.array(run.next_batch(1).indices)
        with pytest.raises(paceline.Conflict) as foreign:
            run.report(1, np.concatenate([served[:-1], outside]), rewards(served.size, 0))
        assert foreign.value.code == "INDICES_NOT_SERVED"
        assert curriculum.refresh().seq == 1
        accepted = run.report(3, [1, 2], rewards(2, 0), unserved="accept")
        assert (accepted.seq, accepted.replayed) == (2, False)
        assert run.report(3, [1, 2], rewards(2, 0), unserved="accept").replayed
        assert curriculum.refresh().seq == 2
