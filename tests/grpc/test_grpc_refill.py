"""Dynamic sampling over gRPC (raw stubs): NextBatch with part, reports with dropped
groups and their counts in the ack, and refused refills with the table's statuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_grpc_server import Raw, error_of, setup, start

from paceline_server.grpc.v1 import paceline_pb2 as pb


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Raw]:
    server, service = start(tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Raw(channel)
    server.stop(0)
    service.store.close()


def refill(raw: Raw, part: int, size: int, step: int = 0) -> pb.Batch:
    batch: pb.Batch = raw("NextBatch", pb.NextBatchRequest(
        curriculum="math", run_id="r", step=step, part=part, size=size))
    return batch


def test_refill_and_report_with_dropped_groups(raw: Raw) -> None:
    first = setup(raw)
    one = refill(raw, 1, 4)
    assert one.part == 1 and len(one.indices) == 4
    assert not set(one.indices) & set(first.indices)
    assert refill(raw, 1, 4) == one  # idempotent per (run, step, part)
    served = list(first.indices) + list(one.indices)
    rewards = np.ones((len(served), 2, 2))
    rewards[2:, 0, 0] = 0.0  # the first two groups agree: dropped
    request = pb.ReportRequest(curriculum="math", run_id="r", step=0, indices=served,
                               rewards=pb.Array(shape=list(rewards.shape),
                                                f64=rewards.ravel().tolist()),
                               dropped=served[:2], idempotency_key="k")
    ack = raw("Report", request)
    assert (ack.rollouts_generated, ack.rollouts_trained, ack.groups_dropped) == (24, 20, 2)
    with pytest.raises(grpc.RpcError) as info:
        refill(raw, 2, 1)
    code, error, _ = error_of(info)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.code == "STEP_ALREADY_REPORTED"


@pytest.mark.parametrize(("part", "size", "status", "code"), [
    (2, 3, grpc.StatusCode.FAILED_PRECONDITION, "REFILL_OUT_OF_ORDER"),
    (1, 93, grpc.StatusCode.INVALID_ARGUMENT, "REFILL_TOO_LARGE"),
    (65, 1, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (-1, 1, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
])
def test_bad_refills(raw: Raw, part: int, size: int, status: grpc.StatusCode,
                     code: str) -> None:
    setup(raw)
    with pytest.raises(grpc.RpcError) as info:
        refill(raw, part, size)
    got, error, _ = error_of(info)
    assert (got, error.code) == (status, code)
    assert len(refill(raw, 1, 3).indices) == 3  # nothing was stored before


def test_refill_before_the_step_is_served(raw: Raw) -> None:
    setup(raw)
    with pytest.raises(grpc.RpcError) as info:
        refill(raw, 1, 3, step=5)
    assert error_of(info)[1].code == "REFILL_OUT_OF_ORDER"


def test_the_client_shows_rollout_counts_as_rest_does(tmp_path: Path) -> None:
    """REST (and embedded) put the rollout counts on the ack of a report that named its
    dropped groups only; over gRPC the client showed them on every report."""
    import paceline
    from support import CLIENT_SPEC

    server, service = start(tmp_path)
    try:
        with paceline.Client(f"grpc://127.0.0.1:{server.port}") as client:
            cur = client.create_curriculum("counts", **CLIENT_SPEC)
            run = cur.start_run("r", heartbeat_interval=None)
            acks = []
            for step, dropped in ((0, None), (1, [])):
                batch = run.next_batch(step)
                rewards = np.ones((len(batch.indices), 2, len(cur.objectives)))
                acks.append(run.report(step, batch.indices, rewards, dropped=dropped))
        plain, dynamic = acks
        assert (plain.rollouts_generated, plain.rollouts_trained, plain.groups_dropped) \
            == (None, None, None)
        size = CLIENT_SPEC["batch_size"] * 2
        assert (dynamic.rollouts_generated, dynamic.rollouts_trained,
                dynamic.groups_dropped) == (size, size, 0)
    finally:
        server.stop(0)
        service.store.close()
