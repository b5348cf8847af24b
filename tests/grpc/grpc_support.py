"""Helpers for the gRPC tests: a service with both APIs (`support.start_service` with
`grpc=True`), and fault injection in front of either transport, keyed by RPC name so one
test can plan "lose the answer of the next Report" over HTTP and over gRPC alike (the
faults themselves are `support`'s)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc
import httpx

import paceline
from paceline import _grpc_pb2 as pb
from paceline._grpc_transport import GrpcSyncTransport
from support import Fault, FaultInjector, FaultPlan, status

FAST = paceline.RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05)


def refuse(rpc: str, retry_after: str | None = None, throttle: bool = False) -> Fault:
    """"Try again later" without forwarding: 503 / UNAVAILABLE, or with `throttle` a
    proxy's 429 / RESOURCE_EXHAUSTED, with an optional retry-after."""
    return status(rpc, 429 if throttle else 503, retry_after)


# ----------------------------------------------------------------- fault injection
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


def _rpc_of(request: httpx.Request) -> str:
    return http_rpc(request.method, request.url.path)


def http_faults() -> FaultInjector:
    """An httpx transport that misbehaves as planned (faults keyed by RPC name)."""
    return FaultInjector(key=_rpc_of, match=operator.eq)


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
        self.plan = FaultPlan(operator.eq)

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
        if fault.status == 429:  # a proxy's rate limit: no Paceline error attached
            raise InjectedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "injected", trailer)
        info = pb.ErrorInfo(code="UNAVAILABLE", message="injected", details_json="{}",
                            http_status=fault.status or 503)
        raise InjectedError(grpc.StatusCode.UNAVAILABLE, "injected",
                            (("paceline-error-bin", info.SerializeToString()), *trailer))


def client_with_faults(transport: str, url: str, **kwargs: Any
                       ) -> tuple[paceline.Client, FaultInjector | GrpcFaults]:
    """A client on `url` whose calls pass through a fault injector."""
    retries = kwargs.pop("retries", FAST)
    if transport == "http":
        faults = http_faults()
        return paceline.Client(url, transport=faults, retries=retries, **kwargs), faults
    interceptor = GrpcFaults()
    client = paceline.Client.__new__(paceline.Client)
    client._setup(GrpcSyncTransport(url, paceline.RetryPolicy.of(retries),
                                    interceptors=[interceptor], **kwargs), "json", None)
    return client, interceptor
