"""Dynamic sampling through the client: `Run.refill` and `report(..., dropped=...)`,
sync and async, embedded, over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paceline
from support import CLIENT_SPEC as SPEC


def rewards_for(indices: list[int], equal: list[int]) -> np.ndarray:
    """[n, 4, 2]: the groups of `equal` all-correct, the others mixed."""
    out = np.zeros((len(indices), 4, 2))
    out[:, ::2, 0] = 1.0
    for position, index in enumerate(indices):
        if index in equal:
            out[position, :, 0] = 1.0
    return out


def check_cycle(run: paceline.Run) -> None:
    first = run.next_batch(0)
    one = run.refill(0, 1, size=3)
    assert (one.part, len(one.indices)) == (1, 3)
    assert not set(one.indices) & set(first.indices)
    assert one.reward_weights == first.reward_weights
    assert run.refill(0, 1, size=3) == one
    with pytest.raises(paceline.Conflict) as conflict:
        run.refill(0, 3, size=1)
    assert conflict.value.code == "REFILL_OUT_OF_ORDER"
    with pytest.raises(paceline.InvalidInput) as too_large:
        run.refill(0, 2, size=1000)
    assert too_large.value.code == "REFILL_TOO_LARGE"
    served = first.indices + one.indices
    dropped = first.indices[:2]
    ack = run.report(0, served, rewards_for(served, dropped), dropped=dropped)
    assert (ack.rollouts_generated, ack.rollouts_trained, ack.groups_dropped) == \
        (44, 36, 2)
    with pytest.raises(paceline.Conflict) as late:
        run.refill(0, 2, size=1)
    assert late.value.code == "STEP_ALREADY_REPORTED"


def test_embedded_sync(embedded: paceline.Client) -> None:
    cur = embedded.create_curriculum("math", **SPEC)
    with cur.start_run(run_id="r", heartbeat_interval=None) as run:
        check_cycle(run)
        # a report without `dropped` keeps the plain ack
        batch = run.next_batch(1)
        plain = run.report(1, batch.indices, rewards_for(batch.indices, []))
        assert plain.rollouts_generated is None


@pytest.fixture
def grpc_url(tmp_path: Path) -> Iterator[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grpc"))
    from test_grpc_server import start

    server, service = start(tmp_path)
    yield f"grpc://127.0.0.1:{server.port}"
    server.stop(0)
    service.store.close()


def test_grpc(grpc_url: str) -> None:
    with paceline.Client(grpc_url) as client:
        cur = client.create_curriculum("math", **SPEC)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            check_cycle(run)


@pytest.mark.parametrize("transport", ["embedded", "grpc"])
def test_async(tmp_path: Path, transport: str, request: pytest.FixtureRequest) -> None:
    async def body(client: paceline.AsyncClient) -> None:
        async with client:
            cur = await client.create_curriculum("math", **SPEC)
            async with await cur.start_run(run_id="r", heartbeat_interval=None) as run:
                first = await run.next_batch(0)
                one = await run.refill(0, 1, size=5)
                assert (one.part, len(set(one.indices) - set(first.indices))) == (1, 5)
                assert await run.refill(0, 1, size=5) == one
                served = first.indices + one.indices
                ack = await run.report(0, served, rewards_for(served, one.indices),
                                       dropped=one.indices)
                assert (ack.rollouts_trained, ack.groups_dropped) == (32, 5)
                with pytest.raises(paceline.Conflict):
                    await run.refill(0, 2, size=1)

    client: Any
    if transport == "embedded":
        client = paceline.AsyncClient.embedded(tmp_path / "a.db")
    else:
        client = paceline.AsyncClient(request.getfixturevalue("grpc_url"))
    asyncio.run(asyncio.wait_for(body(client), timeout=60))
