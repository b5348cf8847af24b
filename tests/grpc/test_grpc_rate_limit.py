"""The rate limit holds on gRPC as on REST: the same buckets (one budget per client in a
`serve` process, whichever transport it calls), RESOURCE_EXHAUSTED with the error
`RATE_LIMITED` and a `retry-after` the SDK honours, counted in the request metrics.
Health checks are not limited, as REST's probes are not."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_grpc_metrics import TOKEN, Both, serving, value

import paceline
from paceline import _transport
from paceline_server.api.app import create_app
from paceline_server.domain.errors import InvalidReport, RateLimited, Unavailable
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.transport.errors import retry_after
from paceline_server.transport.ratelimit import peer_host
from support import SPEC, start_service

OTHER = "rl-write-93c0"  # TOKEN, which `Both.call` sends, is the other one


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Both]:
    """0.5 calls/s, burst 3, over REST and gRPC in one process."""
    with serving(Settings(database_url=f"sqlite:///{tmp_path / 'rl.db'}", auto_migrate=True,
                          api_tokens={TOKEN: "write", OTHER: "write"},
                          rate_limit_per_s=0.5, rate_limit_burst=3)) as found:
        yield found


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, pb.ErrorInfo, str | None]:
    call: Any = error
    trailer = dict(call.trailing_metadata() or ())
    after = trailer.get("retry-after")
    return (call.code(), pb.ErrorInfo.FromString(trailer["paceline-error-bin"]),
            after.decode() if isinstance(after, bytes) else after)


def test_grpc_calls_take_from_the_bucket(limited: Both) -> None:
    for _ in range(3):
        limited.call("ListCurricula", pb.ListCurriculaRequest())
    with pytest.raises(grpc.RpcError) as caught:
        limited.call("ListCurricula", pb.ListCurriculaRequest())
    code, info, after = refusal(caught.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (info.code, info.http_status) == ("RATE_LIMITED", 429)
    assert json.loads(info.details_json)["burst"] == 3
    assert after == "2"  # one token at 0.5 / s, as REST's Retry-After says
    # Another token has its own bucket; the health service is not limited.
    limited.call("ListCurricula", pb.ListCurriculaRequest(), token=OTHER)
    health = health_pb2_grpc.HealthStub(limited.channel)
    for _ in range(5):
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status \
            == health_pb2.HealthCheckResponse.SERVING
    samples = limited.samples()
    assert value(samples, "paceline_request_errors_total", transport="grpc",
                 route="/paceline.v1.Paceline/ListCurricula", code="RATE_LIMITED") == 1


def test_unknown_tokens_share_the_address_bucket(limited: Both) -> None:
    codes = []
    for i in range(4):
        try:
            limited.call("ListCurricula", pb.ListCurriculaRequest(), token=f"guess-{i}")
        except grpc.RpcError as error:
            codes.append(refusal(error)[1].code)
    assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]  # guessing is throttled


def test_rest_and_grpc_share_one_budget(limited: Both) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert limited.rest.get("/v1/curricula", headers=headers).status_code == 200
    assert limited.rest.get("/v1/curricula", headers=headers).status_code == 200
    limited.call("ListCurricula", pb.ListCurriculaRequest())  # the burst's third
    with pytest.raises(grpc.RpcError) as caught:
        limited.call("ListCurricula", pb.ListCurriculaRequest())
    assert refusal(caught.value)[1].code == "RATE_LIMITED"
    refused = limited.rest.get("/v1/curricula", headers=headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "RATE_LIMITED")


def test_serve_shares_the_limiter_and_the_sdk_rides_it_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`paceline-server serve` with both APIs: REST calls spend the budget gRPC calls
    then lack, and the SDK over gRPC waits what retry-after says until each call
    succeeds (the refusals counted under the gRPC transport)."""
    waits: list[float] = []

    def sleep(seconds: float, *_: object) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(_transport, "_sleep", sleep)
    with start_service(tmp_path / "serve.db", grpc=True, PACELINE_RATE_LIMIT_PER_S="1",
                       PACELINE_RATE_LIMIT_BURST="2") as service:
        for _ in range(2):
            assert httpx.get(f"{service.url}/v1/curricula").status_code == 200
        with grpc.insecure_channel(service.grpc.removeprefix("grpc://")) as channel:
            stub = channel.unary_unary("/paceline.v1.Paceline/ListCurricula",
                                       request_serializer=pb.ListCurriculaRequest.SerializeToString,
                                       response_deserializer=pb.ListCurriculaResponse.FromString)
            with pytest.raises(grpc.RpcError) as caught:  # the budget REST spent
                stub(pb.ListCurriculaRequest(), timeout=10)
        assert refusal(caught.value)[1].code == "RATE_LIMITED"
        with paceline.Client(service.grpc, retries=paceline.RetryPolicy(
                max_attempts=4, backoff_initial=0.0, retry_after_max=5.0)) as client:
            cur = client.create_curriculum("rl", SPEC["layout"]["distributions"],
                                           objectives=SPEC["objectives"], batch_size=8)
            infos = [cur.refresh() for _ in range(3)]
        metrics = httpx.get(f"{service.url}/metrics").text
    assert [info.name for info in infos] == ["rl"] * 3
    assert waits and all(wait == 1.0 for wait in waits)
    refused = [line for line in metrics.splitlines()
               if line.startswith("paceline_request_errors_total{")
               and 'transport="grpc"' in line and 'code="RATE_LIMITED"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in refused) == len(waits) + 1


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:127.0.0.1:50051", "127.0.0.1"),
    ("ipv6:[::1]:50051", "::1"),
    ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
    # what grpcio really says: the brackets percent-encoded
    ("ipv6:%5B::1%5D:50051", "::1"),
    ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
    ("ipv6:%5B::ffff:10.0.0.7%5D:443", "::ffff:10.0.0.7"),
    ("unix:/tmp/paceline.sock", "unix:/tmp/paceline.sock"),
    ("unix-abstract:name", "unix-abstract:name"),
])
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_an_ipv6_client_keeps_its_bucket_across_connections(tmp_path: Path) -> None:
    """A client over IPv6 without a known token is keyed by its address, not by the
    connection: grpcio's peer string for IPv6 is percent-encoded, and read as it came the
    key held the client's port, so each new channel had a full bucket (here a fourth
    call, and any number more, went through)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'v6.db'}", auto_migrate=True,
                        rate_limit_per_s=0.01, rate_limit_burst=3)
    app = create_app(settings)
    server = create_server(app.state.service, settings, port=0, host="::1",
                           limiter=app.state.rate_limiter)
    server.start()
    codes = []
    try:
        for _ in range(4):
            with grpc.insecure_channel(f"[::1]:{server.port}") as channel:
                stub = channel.unary_unary(
                    "/paceline.v1.Paceline/ListCurricula",
                    request_serializer=pb.ListCurriculaRequest.SerializeToString,
                    response_deserializer=pb.ListCurriculaResponse.FromString)
                try:
                    stub(pb.ListCurriculaRequest(), timeout=10)
                    codes.append("OK")
                except grpc.RpcError as error:
                    codes.append(refusal(error)[1].code)
    finally:
        server.stop(0)
        app.state.service.close()
    assert codes == ["OK"] * 3 + ["RATE_LIMITED"]


def test_retry_after_is_one_rule_for_both_transports() -> None:
    assert retry_after(RateLimited("slow down", {"retry_after_s": 0.2})) == "1"
    assert retry_after(RateLimited("slow down", {"retry_after_s": 1.5})) == "2"
    assert retry_after(RateLimited("slow down")) is None  # no wait known: not retryable
    assert retry_after(Unavailable("database down")) == "1"
    assert retry_after(InvalidReport("bad")) is None
