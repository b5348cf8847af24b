"""gRPC calls show in the same Prometheus series as REST requests, told apart by the
`transport` label: requests, latency, errors by stable code, and the use cases' counters
(reports, rollouts, batches, refills)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from paceline_server.api.app import create_app
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings

SERVICE = "paceline.v1.Paceline"
TOKEN = "metrics-write"
READER = "metrics-read"
SPEC = {"name": "m", "layout": {"distributions": [{"name": "easy", "size": 30},
                                                  {"name": "hard", "size": 30}]},
        "objectives": ["acc"], "sampler": "uniform", "batch_size": 4, "seed": 2}


@dataclass
class Both:
    rest: TestClient
    channel: grpc.Channel

    def call(self, method: str, request: Any, token: str | None = TOKEN) -> Any:
        output = getattr(pb, pb.DESCRIPTOR.services_by_name["Paceline"]
                         .methods_by_name[method].output_type.name)
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=output.FromString)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return stub(request, timeout=10, metadata=metadata)

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = self.rest.get("/metrics").text
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


@contextmanager
def serving(config: Settings) -> Iterator[Both]:
    """REST and gRPC in this process over one service, metrics and rate limiter, as
    `serve` runs them."""
    app = create_app(config)
    server = create_server(app.state.service, config, port=0, host="127.0.0.1",
                           metrics=app.state.metrics, limiter=app.state.rate_limiter)
    server.start()
    try:
        with TestClient(app) as rest, \
                grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Both(rest, channel)
    finally:
        server.stop(0)


@pytest.fixture
def both(tmp_path: Path) -> Iterator[Both]:
    with serving(Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", auto_migrate=True,
                          api_tokens={TOKEN: "write", READER: "read"})) as found:
        yield found


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def route(method: str) -> str:
    return f"/{SERVICE}/{method}"


def train_one_step(both: Both) -> None:
    both.call("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=json.dumps(SPEC)))
    both.call("AttachRun", pb.AttachRunRequest(curriculum="m", run_id="r"))
    batch = both.call("NextBatch", pb.NextBatchRequest(curriculum="m", run_id="r", step=0))
    n = len(batch.indices)
    both.call("Report", pb.ReportRequest(
        curriculum="m", run_id="r", step=0, indices=batch.indices,
        rewards=pb.Array(shape=[n, 2, 1], f64=[1.0, 0.0] * n), next_step=1))


def test_grpc_calls_are_counted_with_transport_grpc(both: Both) -> None:
    train_one_step(both)
    samples = both.samples()
    for method in ("CreateCurriculum", "AttachRun", "NextBatch", "Report"):
        assert value(samples, "paceline_http_requests_total", transport="grpc",
                     method="POST", route=route(method), status="200") == 1.0, method
        assert value(samples, "paceline_http_request_seconds_count", transport="grpc",
                     method="POST", route=route(method)) == 1.0, method
    # the use cases' counters, as REST counts them
    assert value(samples, "paceline_reports_total", curriculum="m") == 1.0
    assert value(samples, "paceline_batches_total", curriculum="m") == 2.0  # + next_step
    assert value(samples, "paceline_rollouts_total", curriculum="m", kind="generated") == 8.0
    # no REST request was made but the scrape itself
    rest = {key for key in samples if key[0] == "paceline_http_requests_total"
            and ("transport", "rest") in key[1]}
    assert {dict(labels)["route"] for _, labels in rest} <= {"/metrics"}


def test_a_failing_rpc_counts_an_error_with_its_code(both: Both) -> None:
    train_one_step(both)
    failures = [
        ("GetCurriculum", pb.GetCurriculumRequest(name="absent"), TOKEN,
         grpc.StatusCode.NOT_FOUND, "CURRICULUM_NOT_FOUND", "404"),
        ("Report", pb.ReportRequest(curriculum="m", run_id="r", step=1, indices=[0],
                                    rewards=pb.Array(shape=[1, 1, 3], f64=[1, 1, 1])),
         TOKEN, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REPORT", "422"),
        ("GetState", pb.GetStateRequest(curriculum="m"), None,
         grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "401"),
        ("AttachRun", pb.AttachRunRequest(curriculum="m"), READER,
         grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN", "403"),
    ]
    for method, request, token, status, code, http in failures:
        before = both.samples()
        with pytest.raises(grpc.RpcError) as info:
            both.call(method, request, token)
        error: Any = info.value
        assert error.code() == status
        after = both.samples()
        labels = {"transport": "grpc", "route": route(method)}
        assert value(after, "paceline_request_errors_total", **labels, code=code) \
            == value(before, "paceline_request_errors_total", **labels, code=code) + 1, code
        counted = {"method": "POST", "status": http, **labels}
        assert value(after, "paceline_http_requests_total", **counted) \
            == value(before, "paceline_http_requests_total", **counted) + 1
    samples = both.samples()
    # a successful call counts no error
    assert not any(name == "paceline_request_errors_total" and ("code", "OK") in labels
                   for name, labels in samples)


def test_an_unexpected_failure_is_counted_as_internal(both: Both,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("paceline_server.app.operations.strategy_catalog", broken)
    with pytest.raises(grpc.RpcError) as info:
        both.call("ListStrategies", pb.ListStrategiesRequest())
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INTERNAL
    samples = both.samples()
    assert value(samples, "paceline_request_errors_total", transport="grpc",
                 route=route("ListStrategies"), code="INTERNAL") == 1.0
    assert value(samples, "paceline_http_requests_total", transport="grpc", method="POST",
                 route=route("ListStrategies"), status="500") == 1.0


def test_a_retried_grpc_report_is_counted_once_and_as_a_retry(both: Both) -> None:
    """As over REST (tests/api/test_request_metrics.py): a replayed ack is a retry, not
    a report, and its rollouts are not counted again."""
    both.call("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=json.dumps(SPEC)))
    both.call("AttachRun", pb.AttachRunRequest(curriculum="m", run_id="r"))
    batch = both.call("NextBatch", pb.NextBatchRequest(curriculum="m", run_id="r", step=0))
    n = len(batch.indices)
    request = pb.ReportRequest(curriculum="m", run_id="r", step=0, indices=batch.indices,
                               rewards=pb.Array(shape=[n, 2, 1], f64=[1.0, 0.0] * n),
                               idempotency_key="r/0")
    assert [both.call("Report", request).replayed for _ in range(3)] == [False, True, True]
    samples = both.samples()
    assert value(samples, "paceline_reports_total", curriculum="m") == 1.0
    assert value(samples, "paceline_report_replays_total", curriculum="m") == 2.0
    assert value(samples, "paceline_rollouts_total", curriculum="m", kind="generated") \
        == 2.0 * n
    assert value(samples, "paceline_http_requests_total", transport="grpc", method="POST",
                 route=route("Report"), status="200") == 3.0  # every call is a request


def test_rest_and_grpc_share_the_series(both: Both) -> None:
    train_one_step(both)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert both.rest.get("/v1/curricula/m", headers=headers).status_code == 200
    assert both.rest.get("/v1/curricula/absent", headers=headers).status_code == 404
    samples = both.samples()
    assert value(samples, "paceline_http_requests_total", transport="rest", method="GET",
                 route="/v1/curricula/{name}", status="404") == 1.0
    assert value(samples, "paceline_request_errors_total", transport="rest",
                 route="/v1/curricula/{name}", code="CURRICULUM_NOT_FOUND") == 1.0
    transports = {dict(labels)["transport"] for name, labels in samples
                  if name == "paceline_http_request_seconds_count"}
    assert transports == {"rest", "grpc"}


def test_a_message_that_does_not_decode_is_malformed_and_counted(both: Both) -> None:
    """grpcio decoded the message before the handler and answered a bare INTERNAL that
    no metric saw; the handler now decodes it and refuses it as REST refuses a body."""
    raw = both.channel.unary_unary(f"/{SERVICE}/Report", request_serializer=None,
                                   response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff", timeout=10, metadata=(("authorization", f"Bearer {TOKEN}"),))
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailer = dict(error.trailing_metadata())
    found = pb.ErrorInfo.FromString(trailer["paceline-error-bin"])
    assert (found.code, found.http_status) == ("MALFORMED_BODY", 400)
    samples = both.samples()
    assert value(samples, "paceline_http_requests_total", transport="grpc", method="POST",
                 route=route("Report"), status="400") == 1.0
    assert value(samples, "paceline_request_errors_total", transport="grpc",
                 route=route("Report"), code="MALFORMED_BODY") == 1.0


def test_an_unknown_method_is_unimplemented_and_counted(both: Both) -> None:
    for method in (f"/{SERVICE}/NoSuchMethod", "/other.Service/Call"):
        stub = both.channel.unary_unary(method, request_serializer=None,
                                        response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            stub(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        assert method in info.value.details()  # type: ignore[attr-defined]
    samples = both.samples()
    assert value(samples, "paceline_http_requests_total", transport="grpc", method="POST",
                 route="unmatched", status="404") == 2.0
    assert value(samples, "paceline_request_errors_total", transport="grpc",
                 route="unmatched", code="NOT_FOUND") == 2.0
    # the standard services are still found (they come before the fallback)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    reply = health_pb2_grpc.HealthStub(both.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
