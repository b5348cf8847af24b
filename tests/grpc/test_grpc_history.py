"""GetHistory and the explanations of GetState over gRPC (raw stubs, as any language sees
them): the same rows and error codes as REST, NaN where REST says null, a read token is
enough."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_grpc_server import Raw, error_of, setup, start

from paceline_server.app.service import PacelineService
from paceline_server.grpc.v1 import paceline_pb2 as pb


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Raw, PacelineService]]:
    server, service = start(tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Raw(channel), service
    server.stop(0)
    service.store.close()


@pytest.fixture
def raw(served: tuple[Raw, PacelineService]) -> Raw:
    return served[0]


def report(raw: Raw, step: int) -> None:
    batch = raw("NextBatch", pb.NextBatchRequest(curriculum="math", run_id="r", step=step))
    rewards = np.ones((len(batch.indices), 4, 2), dtype=np.float32)
    raw("Report", pb.ReportRequest(curriculum="math", run_id="r", step=step,
                                   indices=batch.indices, idempotency_key=f"k{step}",
                                   rewards=pb.Array(shape=rewards.shape, f32=rewards.ravel())))


def test_get_history(served: tuple[Raw, PacelineService]) -> None:
    raw, service = served
    setup(raw)
    for step in range(5):
        report(raw, step)
    history = raw("GetHistory", pb.GetHistoryRequest(curriculum="math"))
    assert (history.head_seq, history.every, history.complete) == (5, 1, True)
    assert list(history.seq) == list(range(6)) and list(history.step) == [-1, 0, 1, 2, 3, 4]
    assert [d.name for d in history.per_distribution] == ["easy", "hard"]
    easy = history.per_distribution[0]
    assert math.isnan(easy.success[0]) and easy.success[1] == pytest.approx(1.0)
    assert list(easy.saturated)[1:] == [True] * 5  # every rollout passes
    expected = service.history("math")
    assert list(easy.probability) == pytest.approx(expected.series["probability"][:, 0])
    assert [s.name for s in history.reward_weights] == ["acc", "len"]
    assert len(history.reward_scale) == len(history.hypervolume) == 6
    downsampled = raw("GetHistory", pb.GetHistoryRequest(curriculum="math", every=2, since=1))
    assert list(downsampled.seq) == [2, 4, 5]
    state = raw("GetState", pb.GetStateRequest(curriculum="math"))
    assert [e.name for e in state.explanations] == ["easy", "hard"]
    assert state.explanations[0].sentence.startswith("`easy` gets ")
    assert "saturated" in list(state.explanations[0].flags)
    assert state.explanations[0].terms["data_share"] == pytest.approx(0.6)


@pytest.mark.parametrize(("request_", "status", "code"), [
    (pb.GetHistoryRequest(curriculum="nope"), grpc.StatusCode.NOT_FOUND,
     "CURRICULUM_NOT_FOUND"),
    (pb.GetHistoryRequest(curriculum="math", since=7), grpc.StatusCode.INVALID_ARGUMENT,
     "HISTORY_OUT_OF_RANGE"),
    (pb.GetHistoryRequest(curriculum="math", every=0), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_DOWNSAMPLING"),
])
def test_bad_history_requests(raw: Raw, request_: pb.GetHistoryRequest,
                              status: grpc.StatusCode, code: str) -> None:
    setup(raw)
    with pytest.raises(grpc.RpcError) as info:
        raw("GetHistory", request_)
    got, error, _ = error_of(info)
    assert (got, error.code, error.http_status) == (status, code, 404 if code.startswith(
        "CURRICULUM") else 422)


def test_history_is_a_read(tmp_path: Path) -> None:
    server, service = start(tmp_path, api_tokens={"w": "write", "r": "read"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            setup(Raw(channel, "w"))
            history = Raw(channel, "r")("GetHistory", pb.GetHistoryRequest(curriculum="math"))
            assert list(history.seq) == [0]
            with pytest.raises(grpc.RpcError) as info:
                Raw(channel)("GetHistory", pb.GetHistoryRequest(curriculum="math"))
            assert error_of(info)[1].code == "UNAUTHENTICATED"
    finally:
        server.stop(0)
        service.store.close()
