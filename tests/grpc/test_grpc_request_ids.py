"""Request ids over gRPC, as over REST: the caller's plain `x-request-id` metadata (or a
fresh id) comes back in the trailing metadata of every answer, errors included; a failed
call is logged under it; the client sends one id per operation, the same on each retry,
and puts it on the errors it raises."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_support import GrpcFaults, client_with_faults
from test_grpc_metrics import TOKEN, Both, serving

import paceline
from paceline_server.api.app import create_app
from paceline_server.grpc.server import create_server
from paceline_server.grpc.service import PacelineHandlers
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from support import CLIENT_SPEC, status

SERVICE = "paceline.v1.Paceline"
FRESH = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Both]:
    def boom(self: PacelineHandlers, request: Any, context: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(PacelineHandlers, "list_strategies", boom)
    with serving(Settings(database_url=f"sqlite:///{tmp_path / 'ids.db'}",
                          auto_migrate=True, api_tokens={TOKEN: "write"})) as found:
        yield found


def _call(both: Both, method: str, request: Any, request_id: str | None) -> Any:
    output = getattr(pb, pb.DESCRIPTOR.services_by_name["Paceline"]
                     .methods_by_name[method].output_type.name)
    stub = both.channel.unary_unary(f"/{SERVICE}/{method}",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=output.FromString)
    metadata = [("authorization", f"Bearer {TOKEN}")]
    if request_id is not None:
        metadata.append(("x-request-id", request_id))
    try:
        _, call = stub.with_call(request, timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        call = exc
    return dict(call.trailing_metadata() or ())


def test_every_answer_names_its_request(both: Both, caplog: pytest.LogCaptureFixture) -> None:
    assert _call(both, "ListCurricula", pb.ListCurriculaRequest(), "job-3.step:9")[
        "x-request-id"] == "job-3.step:9"
    assert FRESH.fullmatch(_call(both, "ListCurricula", pb.ListCurriculaRequest(),
                                 None)["x-request-id"])
    missing = _call(both, "GetCurriculum", pb.GetCurriculumRequest(name="nope"), "lost-1")
    assert missing["x-request-id"] == "lost-1" and "paceline-error-bin" in missing
    assert FRESH.fullmatch(_call(both, "ListCurricula", pb.ListCurriculaRequest(),
                                 "a b; forged")["x-request-id"])
    with caplog.at_level(logging.ERROR):
        failed = _call(both, "ListStrategies", pb.ListStrategiesRequest(), "find-me-7")
    assert failed["x-request-id"] == "find-me-7"
    assert any("(request find-me-7)" in r.getMessage() for r in caplog.records)


class Recording(GrpcFaults):
    """Keeps the request id of every attempt, then misbehaves as planned."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.ids.append(dict(details.metadata)["x-request-id"])
        return super().intercept_unary_unary(continuation, details, request)


def test_the_client_sends_one_id_per_operation_and_names_it_on_errors(
        tmp_path: Path) -> None:
    from paceline._grpc_transport import GrpcSyncTransport

    config = Settings(database_url=f"sqlite:///{tmp_path / 'ids.db'}", auto_migrate=True)
    server = create_server(create_app(config).state.service, config, port=0,
                           host="127.0.0.1")
    server.start()
    try:
        url = f"grpc://127.0.0.1:{server.port}"
        recording = Recording()
        client = paceline.Client.__new__(paceline.Client)
        client._setup(GrpcSyncTransport(url, paceline.RetryPolicy(
            max_attempts=3, backoff_initial=0.01, backoff_max=0.02),
            interceptors=[recording]), "json", None)
        with client:
            recording.plan.inject(status("CreateCurriculum", 503))
            client.create_curriculum("ids", **CLIENT_SPEC)
            first, retried = recording.ids
            assert first == retried and FRESH.fullmatch(first)
            with pytest.raises(paceline.NotFound) as missing:
                client.curriculum("nope").state()
            assert missing.value.request_id == recording.ids[-1] != first
        own, _ = client_with_faults("grpc", url, headers={"X-Request-ID": "my-job-1"})
        with own, pytest.raises(paceline.NotFound) as mine:
            own.curriculum("nope").state()
        assert mine.value.request_id == "my-job-1"
    finally:
        server.stop(0)
