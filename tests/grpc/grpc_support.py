"""Helpers for the gRPC tests: a `paceline-server serve` process with both APIs, and
fault injection in front of either transport, keyed by RPC name so one test can plan
"lose the answer of the next Report" over HTTP and over gRPC alike."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

import paceline
from api_support import free_port as free_port  # re-exported for the gRPC tests
from api_support import running_service
from paceline import _grpc_pb2 as pb
from paceline._grpc_transport import GrpcSyncTransport

SPEC: dict[str, Any] = {
    "distributions": [{"name": "easy", "size": 60}, {"name": "hard", "size": 40}],
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "uniform",
    "weighting": {"kind": "fixed", "weights": [3, 1]},
    "batch_size": 8,
    "seed": 1,
}
FAST = paceline.RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05)


@dataclass
class Service:
    http: str
    grpc: str
    process: subprocess.Popen[bytes]

    def url(self, transport: str) -> str:
        return self.http if transport == "http" else self.grpc


def serving(target: str) -> bool:
    """The standard health check answers SERVING for the Paceline service."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="paceline.v1.Paceline"), timeout=1)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def start_service(db: Path, **env: str) -> Iterator[Service]:
    """`python -m paceline_server serve --port P --grpc-port G`, ready when /readyz and
    the gRPC health check both answer; shut down gracefully on exit."""
    with running_service(f"sqlite:///{db}", env={"PACELINE_LOG_LEVEL": "warning", **env},
                         grpc=True, graceful=True,
                         ready=lambda s: serving(f"127.0.0.1:{s.grpc_port}")) as service:
        yield Service(service.url, service.grpc, service.process)


# ----------------------------------------------------------------- fault injection
@dataclass(frozen=True)
class Fault:
    """What to do to the next call of `rpc` (a method name of paceline.v1.Paceline):
    - "refuse": answer "try again later" without forwarding (503 / UNAVAILABLE, or
      `throttle`: 429 / RESOURCE_EXHAUSTED from a proxy) with an optional retry-after;
    - "lost": forward it (the service applies it), then lose the answer;
    - "connect": fail to connect without forwarding."""

    rpc: str
    kind: str
    retry_after: str | None = None
    throttle: bool = False


@dataclass
class Plan:
    faults: list[Fault] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def take(self, rpc: str) -> Fault | None:
        self.seen.append(rpc)
        for i, fault in enumerate(self.faults):
            if fault.rpc == rpc:
                return self.faults.pop(i)
        return None

    def count(self, rpc: str) -> int:
        return self.seen.count(rpc)


def http_rpc(method: str, path: str) -> str:
    """The RPC name of a REST route (the one-to-one mapping of the API)."""
    parts = [unquote(p) for p in path.removeprefix("/v1/curricula").split("/") if p]
    table: dict[tuple[str, int, str], str] = {
        ("POST", 0, ""): "CreateCurriculum", ("GET", 0, ""): "ListCurricula",
        ("GET", 1, ""): "GetCurriculum", ("DELETE", 1, ""): "DeleteCurriculum",
        ("POST", 2, "runs"): "AttachRun", ("GET", 2, "runs"): "ListRuns",
        ("GET", 3, "runs"): "GetRun", ("POST", 4, "runs"): "Heartbeat",
        ("POST", 2, "reports"): "Report", ("POST", 2, "batches"): "NextBatch",
        ("GET", 2, "state"): "GetState"}
    return table.get((method, len(parts), parts[1] if len(parts) > 1 else ""), path)


class HttpFaults(httpx.BaseTransport):
    """An httpx transport that misbehaves as planned, then passes through."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.plan = Plan()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.take(http_rpc(request.method, request.url.path))
        if fault is None:
            return self.inner.handle_request(request)
        if fault.kind == "connect":
            raise httpx.ConnectError("injected connection failure", request=request)
        if fault.kind == "lost":
            response = self.inner.handle_request(request)
            response.read()
            response.close()
            raise httpx.ReadTimeout("injected: answer lost", request=request)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        return httpx.Response(429 if fault.throttle else 503, headers=headers,
                              request=request, json={"error": {
                                  "code": "UNAVAILABLE", "message": "injected", "details": {}}})

    def close(self) -> None:
        self.inner.close()


class InjectedError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call made up by the interceptor."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailer: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        super().__init__()
        self._code, self._details, self._trailer = code, details, trailer

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailer

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class GrpcFaults(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A client interceptor that misbehaves as planned, then passes through."""

    def __init__(self) -> None:
        self.plan = Plan()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        fault = self.plan.take(details.method.rsplit("/", 1)[-1])
        if fault is None:
            return continuation(details, request)
        if fault.kind == "connect":
            raise InjectedError(grpc.StatusCode.UNAVAILABLE, "injected connection failure")
        if fault.kind == "lost":
            continuation(details, request).exception()  # applied; the answer is dropped
            raise InjectedError(grpc.StatusCode.DEADLINE_EXCEEDED, "injected: answer lost")
        trailer: tuple[tuple[str, str | bytes], ...] = (
            () if fault.retry_after is None else (("retry-after", fault.retry_after),))
        if fault.throttle:  # a proxy's rate limit: no Paceline error attached
            raise InjectedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "injected", trailer)
        info = pb.ErrorInfo(code="UNAVAILABLE", message="injected", details_json="{}",
                            http_status=503)
        raise InjectedError(grpc.StatusCode.UNAVAILABLE, "injected",
                            (("paceline-error-bin", info.SerializeToString()), *trailer))


def client_with_faults(transport: str, url: str, **kwargs: Any
                       ) -> tuple[paceline.Client, HttpFaults | GrpcFaults]:
    """A client on `url` whose calls pass through a fault injector."""
    retries = kwargs.pop("retries", FAST)
    if transport == "http":
        faults = HttpFaults()
        return paceline.Client(url, transport=faults, retries=retries, **kwargs), faults
    interceptor = GrpcFaults()
    client = paceline.Client.__new__(paceline.Client)
    client._setup(GrpcSyncTransport(url, paceline.RetryPolicy.of(retries),
                                    interceptors=[interceptor], **kwargs), "json", None)
    return client, interceptor
