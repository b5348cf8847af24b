"""The gRPC server in process, through raw stubs: what a C++/Go/Rust trainer sees —
packed arrays, status codes from the shared error table with the error in trailing
metadata, bearer-token scopes, the health service and server reflection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import paceline
from paceline import _grpc_codec
from paceline_server.api import errors as table
from paceline_server.app.service import PacelineService
from paceline_server.domain import errors
from paceline_server.grpc.server import GrpcServer, create_server
from paceline_server.grpc.service import PacelineHandlers
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import CLIENT_SPEC as SPEC

SERVICE = "paceline.v1.Paceline"


class Raw:
    """Unary calls by RPC name, as any language's generated stub would make them."""

    def __init__(self, channel: grpc.Channel, token: str | None = None) -> None:
        self.channel = channel
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __call__(self, method: str, request: Any) -> Any:
        output = _grpc_codec.response_class(method)
        call = self.channel.unary_unary(f"/{SERVICE}/{method}",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=output.FromString)
        return call(request, timeout=10, metadata=self.metadata)


def start(tmp_path: Path, **settings: Any) -> tuple[GrpcServer, PacelineService]:
    config = Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", **settings)
    service = PacelineService(open_store(config.database_url, **config.store_options()),
                              config)
    server = create_server(service, config, port=0, host="127.0.0.1")
    server.start()
    return server, service


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


def spec(name: str = "math", **change: Any) -> str:
    layout = {"distributions": SPEC["distributions"]}
    body = {k: v for k, v in SPEC.items() if k != "distributions"}
    return json.dumps({"name": name, "layout": layout, **body, **change})


def setup(raw: Raw) -> pb.Batch:
    raw("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=spec()))
    raw("AttachRun", pb.AttachRunRequest(curriculum="math", run_id="r"))
    batch: pb.Batch = raw("NextBatch", pb.NextBatchRequest(curriculum="math", run_id="r",
                                                           step=0))
    return batch


def error_of(info: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, pb.ErrorInfo,
                                                                  dict[str, Any]]:
    call: Any = info.value
    trailer = dict(call.trailing_metadata())
    return call.code(), pb.ErrorInfo.FromString(trailer["paceline-error-bin"]), trailer


# ------------------------------------------------------------------ the table
def test_every_error_class_has_both_statuses() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.PacelineError)
               and c is not errors.PacelineError]
    assert set(classes) <= set(table.TABLE)
    for cls, status in table.TABLE.items():
        error = cls("x")
        assert table.status_of(error) == table.STATUS[cls] == status.http
        assert grpc.StatusCode[table.grpc_status_of(error)]
        # a code generic gRPC clients retry is only used where REST says "retry" too
        assert (status.grpc == "UNAVAILABLE") == table.retryable(error)


def test_every_rpc_has_a_handler(tmp_path: Path) -> None:
    service = PacelineService(open_store(f"sqlite:///{tmp_path / 'h.db'}",
                                         auto_migrate=True), Settings())
    methods = PacelineHandlers(service, Settings()).methods()
    names = [m.name for m in pb.DESCRIPTOR.services_by_name["Paceline"].methods]
    assert [m.name for m in methods] == names
    assert {m.name for m in methods if m.scope == "read"} == {
        "ListCurricula", "GetCurriculum", "ListRuns", "GetRun", "GetState",
        "ListStrategies", "GetHistory"}
    service.store.close()


# ------------------------------------------------------------------ ops services
def test_health_and_reflection(tmp_path: Path) -> None:
    server, service = start(tmp_path)
    target = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) >= {
            SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        described = database.FindFileContainingSymbol(SERVICE)
        assert described.package == "paceline.v1"
        assert "Report" in [m.name for m in described.service[0].method]
    server.health.enter_graceful_shutdown()
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.stop(0)
    service.store.close()


# ------------------------------------------------------------------ packed arrays
def test_packed_float32_report_and_batch(raw: Raw) -> None:
    batch = setup(raw)
    assert list(batch.objectives) == ["acc", "len"]
    assert list(batch.reward_weights) == [0.75, 0.25]
    assert list(batch.distributions) == ["easy", "hard"]
    assert not batch.HasField("loss_weights")
    n = len(batch.indices)
    rewards = np.ones((n, 4, 2), dtype=np.float32)
    request = pb.ReportRequest(curriculum="math", run_id="r", step=0,
                               indices=batch.indices, idempotency_key="k0",
                               rewards=pb.Array(shape=rewards.shape, f32=rewards.ravel()),
                               eval_objectives_by_name={"acc": 0.5, "len": 10.0})
    ack = raw("Report", request)
    assert (ack.seq, ack.replayed) == (1, False)
    again = raw("Report", request)
    assert (again.seq, again.replayed) == (1, True)
    state = raw("GetState", pb.GetStateRequest(curriculum="math"))
    assert state.seq == 1 and sum(d.sampled for d in state.distributions) == n
    assert isinstance(json.loads(state.sampler_json), dict)


def test_flat_report_with_wire_packed_arrays(raw: Raw) -> None:
    """`_grpc_codec.pack` writes the packed field bytes directly; the server reads the
    same values as from `repeated double` filled value by value."""
    batch = setup(raw)
    first, second = batch.indices[0], batch.indices[1]
    rewards = np.array([[1.0, 3.0], [0.0, 4.0], [1.0, 5.0]])
    request = pb.ReportRequest(curriculum="math", run_id="r", step=0,
                               rollout_indices=[first, first, second], group_ids=[0, 0, 1])
    request.rewards.MergeFromString(_grpc_codec.pack(rewards))
    assert list(request.rewards.f64) == rewards.ravel().tolist()
    assert list(request.rewards.shape) == [3, 2]
    assert raw("Report", request).seq == 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"next_size": 4}, "next_size needs next_step"),
    ({"next_step": -1}, "next_step"),
    ({"next_step": 1, "next_size": 0}, "next_size"),
    ({"next_step": 1, "next_size": 101}, "batch size"),
])
def test_bad_next_batch_requests_refuse_the_report(raw: Raw, fields: dict[str, int],
                                                   message: str) -> None:
    batch = setup(raw)
    rewards = np.ones((len(batch.indices), 4, 2), dtype=np.float32)
    with pytest.raises(grpc.RpcError) as info:
        raw("Report", pb.ReportRequest(
            curriculum="math", run_id="r", step=0, indices=batch.indices,
            rewards=pb.Array(shape=rewards.shape, f32=rewards.ravel()), **fields))
    code, error, _ = error_of(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.code, error.http_status) == ("INVALID_REQUEST", 422)
    assert message in error.message
    assert raw("GetState", pb.GetStateRequest(curriculum="math")).seq == 0


@pytest.mark.parametrize(("array", "message"), [
    (pb.Array(shape=[8, 4, 2], f64=[1.0] * 7), "do not fit shape"),
    (pb.Array(shape=[1], f64=[1.0], f32=[1.0]), "not both"),
])
def test_bad_arrays_are_invalid_reports(raw: Raw, array: pb.Array, message: str) -> None:
    batch = setup(raw)
    with pytest.raises(grpc.RpcError) as info:
        raw("Report", pb.ReportRequest(curriculum="math", run_id="r", step=0,
                                       indices=batch.indices, rewards=array))
    code, error, _ = error_of(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.code, error.http_status) == ("INVALID_REPORT", 422)
    assert message in error.message
    assert raw("GetState", pb.GetStateRequest(curriculum="math")).seq == 0


def test_the_client_sends_numbers_only_as_http_does(tmp_path: Path) -> None:
    """The client packs a report's lists into doubles itself: "1" became 1.0 there, and
    True among indices 1 (numpy's conversion), so a report HTTP and the embedded client
    refuse was folded over gRPC. It refuses them alike now, before anything is sent;
    booleans as values (0/1, listed or as an array) still go, as over HTTP."""
    server, service = start(tmp_path)
    try:
        with paceline.Client(f"grpc://127.0.0.1:{server.port}") as client:
            cur = client.create_curriculum("numbers", **SPEC)
            run = cur.start_run("r", heartbeat_interval=None)
            bad: list[dict[str, Any]] = [
                {"rewards": [[["1", 0.5]]]},
                {"rewards": [[[None, 0.5]]]}, {"rewards": np.array([[["1", "0.5"]]])},
                {"indices": [True]}, {"indices": [1, True], "rewards": [[[1, 0.5]]] * 2},
                {"eval_objectives": ["0.5", 1.0]},
                {"eval_objectives": {"acc": "0.5", "len": 1.0}},
                {"advantages": [["0.5"]]}, {"dropped": [1, True]}]
            for change in bad:
                sent = {"indices": [1], "rewards": [[[1.0, 0.5]]], "unserved": "accept",
                        **change}
                with pytest.raises(paceline.InvalidInput) as info:
                    run.report(3, **sent)
                assert info.value.code == "INVALID_REPORT", change
                assert "must be an array of" in info.value.message, change
            assert cur.state().seq == 0
            ack = run.report(3, [1], np.array([[[True, False]]]), unserved="accept")
            assert ack.seq == 1
            ack = run.report(4, [1], [[[True, 0.5]]], eval_objectives={"acc": True, "len": 1},
                             unserved="accept")
            assert ack.seq == 2
    finally:
        server.stop(0)
        service.store.close()


# ------------------------------------------------------------------ errors and auth
def test_errors_carry_code_details_and_rest_status(raw: Raw) -> None:
    with pytest.raises(grpc.RpcError) as info:
        raw("GetCurriculum", pb.GetCurriculumRequest(name="nope"))
    code, error, trailer = error_of(info)
    assert code == grpc.StatusCode.NOT_FOUND
    assert (error.code, error.http_status) == ("CURRICULUM_NOT_FOUND", 404)
    assert json.loads(error.details_json) == {"curriculum": "nope"}
    assert "retry-after" not in trailer
    assert info.value.details() == error.message  # type: ignore[attr-defined]
    raw("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=spec()))
    with pytest.raises(grpc.RpcError) as exists:
        raw("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=spec(seed=5)))
    assert error_of(exists)[0] == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as malformed:
        raw("CreateCurriculum", pb.CreateCurriculumRequest(spec_json="{"))
    assert error_of(malformed)[1].code == "MALFORMED_BODY"
    with pytest.raises(grpc.RpcError) as unconfirmed:
        raw("DeleteCurriculum", pb.DeleteCurriculumRequest(name="math"))
    assert error_of(unconfirmed)[1].code == "INVALID_REQUEST"


def test_retryable_errors_ask_for_a_retry_after(served: tuple[Raw, PacelineService],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw, service = served
    setup(raw)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise errors.Unavailable("database is down")

    monkeypatch.setattr(service, "state", down)
    with pytest.raises(grpc.RpcError) as info:
        raw("GetState", pb.GetStateRequest(curriculum="math"))
    code, error, trailer = error_of(info)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert (error.code, error.http_status, trailer["retry-after"]) == ("UNAVAILABLE", 503, "1")


def test_unexpected_failures_are_internal(served: tuple[Raw, PacelineService],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    raw, service = served

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(service, "list_curricula", broken)
    with pytest.raises(grpc.RpcError) as info:
        raw("ListCurricula", pb.ListCurriculaRequest())
    code, error, _ = error_of(info)
    assert code == grpc.StatusCode.INTERNAL
    assert (error.code, error.http_status) == ("INTERNAL", 500)


def test_bearer_tokens_and_scopes(tmp_path: Path) -> None:
    server, service = start(tmp_path, api_tokens={"reader": "read", "writer": "write"})
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as missing:
            Raw(channel)("ListCurricula", pb.ListCurriculaRequest())
        assert error_of(missing)[0] == grpc.StatusCode.UNAUTHENTICATED
        reader, writer = Raw(channel, "reader"), Raw(channel, "writer")
        assert list(reader("ListCurricula", pb.ListCurriculaRequest()).curricula) == []
        with pytest.raises(grpc.RpcError) as denied:
            reader("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=spec()))
        code, error, _ = error_of(denied)
        assert (code, error.code, error.http_status) == (
            grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN", 403)
        writer("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=spec()))
        with pytest.raises(grpc.RpcError) as batch:  # asking for a batch is a write
            reader("NextBatch", pb.NextBatchRequest(curriculum="math", run_id="r"))
        assert error_of(batch)[0] == grpc.StatusCode.PERMISSION_DENIED
        assert reader("GetState", pb.GetStateRequest(curriculum="math")).seq == 0
    server.stop(0)
    service.store.close()


def test_oversize_messages_are_refused_without_retries(tmp_path: Path) -> None:
    server, service = start(tmp_path, max_body_bytes=4096)
    with paceline.Client(f"grpc://127.0.0.1:{server.port}") as client:
        run = client.create_curriculum("math", **SPEC).start_run(heartbeat_interval=None)
        indices = run.next_batch(0).indices
        with pytest.raises(paceline.InvalidInput) as info:
            run.report(0, indices, np.zeros((len(indices), 64, 2)))
        assert (info.value.code, info.value.status) == ("PAYLOAD_TOO_LARGE", 413)
        assert run.curriculum.state().seq == 0
    server.stop(0)
    service.store.close()


def test_a_port_in_use_fails_loudly(tmp_path: Path) -> None:
    server, service = start(tmp_path)
    with pytest.raises(RuntimeError):
        create_server(service, service.settings, port=server.port, host="127.0.0.1")
    server.stop(0)
    service.store.close()
