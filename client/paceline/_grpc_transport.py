"""gRPC transports (`grpc://host:port`, or `grpcs://` over TLS) with the HTTP transport's
retry policy, so `paceline.Client("grpc://...")` behaves like the HTTP client.

Each operation (`_operations`) is sent as the matching RPC of `paceline.v1.Paceline` and
the answer comes back as the same `Reply` the HTTP transport gives (see `_grpc_codec`).
What is retried: a call that got no answer from the service (UNAVAILABLE or
DEADLINE_EXCEEDED without a Paceline error: connection refused, reset, timed out — like
httpx's transport errors), and errors the service marks retryable (UNAVAILABLE,
RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED whose REST status is in the policy's statuses,
except an outdated schema). The `retry-after` trailing metadata is honoured, else
backoff with full jitter. A message is built once and re-sent as is, so a report's
idempotency key is the same on every attempt.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

try:
    import grpc
    import grpc.aio
    import numpy  # noqa: F401  # the codec packs arrays with it
    from google.protobuf.message import Message
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("grpc:// URLs need grpcio, protobuf and numpy: "
                      "pip install './client[grpc]' from a checkout of the "
                      "repository (the distribution paceline-client, extra grpc)") from exc

from paceline import _grpc_pb2 as pb
from paceline import _transport
from paceline._grpc_codec import SERVICE, Call, encode, response_class
from paceline._operations import Operation
from paceline._payloads import COMPRESS_OVER, ReportEncoding
from paceline._transport import (
    NOT_RETRIED_CODES,
    REQUEST_ID,
    Reply,
    RetryPolicy,
    RetryState,
    new_request_id,
)
from paceline.errors import TransportError

__all__ = ["GrpcAsyncTransport", "GrpcSyncTransport", "grpc_target", "is_grpc_url"]

ERROR_KEY = "paceline-error-bin"
RETRY_AFTER_KEY = "retry-after"
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         grpc.StatusCode.DEADLINE_EXCEEDED})
#: without a Paceline error, these mean the call got no answer from the service
NO_ANSWER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: REST statuses for gRPC codes that come without a Paceline error (a proxy, the runtime)
FALLBACK_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
SCHEMES = {"grpc://": False, "grpcs://": True}
#: gRPC's own message size limits are left to the server (it enforces max_body_bytes)
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # gRPC reconnects after a failed connection on its own backoff (1 s growing to 120 s,
    # shared by every channel of the process), and until then a call fails at once
    # without trying: after a long outage each of the client's retries was spent that
    # way while the server was back. Reconnect at least every second, on this channel's
    # own connections, so a retry (0.5 s, 1 s, 2 s ... apart) meets the server as an
    # HTTP retry does.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]


def is_grpc_url(url: str) -> bool:
    return url.startswith(tuple(SCHEMES))


def grpc_target(url: str) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from a grpc:// or grpcs:// URL."""
    for scheme, tls in SCHEMES.items():
        if url.startswith(scheme):
            target = url[len(scheme):].rstrip("/")
            if not target or "/" in target:
                raise ValueError(f"a gRPC URL is {scheme}host:port; got {url!r}")
            return target, tls
    raise ValueError(f"not a grpc:// or grpcs:// URL: {url!r}")


def _metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The client's headers as call metadata (authorization and any extras)."""
    skip = {"accept", "user-agent", "content-type"}
    return tuple((k.lower(), v) for k, v in headers.items() if k.lower() not in skip)


def _deadline(timeout: Any) -> float | None:
    """Seconds per attempt from a number or an `httpx.Timeout` (its read timeout)."""
    if timeout is None or isinstance(timeout, int | float):
        return None if timeout is None else float(timeout)
    read = getattr(timeout, "read", None)
    return float(read) if read is not None else None


@dataclass(frozen=True)
class Failure:
    """A failed call: its gRPC code and, when the service sent one, the Paceline error."""

    code: grpc.StatusCode
    details: str
    info: pb.ErrorInfo | None
    retry_after: float | None

    @property
    def no_answer(self) -> bool:
        return self.info is None and self.code in NO_ANSWER

    @property
    def status(self) -> int:
        if self.info is not None:
            return self.info.http_status
        return FALLBACK_STATUS.get(self.code, 500)

    def error(self) -> dict[str, Any]:
        """The REST error body of this failure."""
        if self.info is not None:
            details = json.loads(self.info.details_json) if self.info.details_json else {}
            return {"error": {"code": self.info.code, "message": self.info.message,
                              "details": details}}
        code = f"GRPC_{self.code.name}"
        return {"error": {"code": code, "message": self.details or self.code.name,
                          "details": {}}}

    def reply(self, attempts: int, request_id: str | None = None) -> Reply:
        return Reply(self.status, self.error(), "", attempts, request_id)


def failure(error: grpc.RpcError) -> Failure:
    """Read a failed call (sync or asyncio): code, details, trailing metadata."""
    call: Any = error  # both call error classes have code/details/trailing_metadata
    code: grpc.StatusCode = call.code()
    details: str = call.details() or ""
    info = None
    retry_after = None
    for key, value in call.trailing_metadata() or ():
        if key == ERROR_KEY and isinstance(value, bytes):
            info = pb.ErrorInfo.FromString(value)
        elif key == RETRY_AFTER_KEY:
            retry_after = _transport.parse_retry_after(
                value.decode() if isinstance(value, bytes) else value)
    if info is None and code == grpc.StatusCode.RESOURCE_EXHAUSTED \
            and "larger than max" in details:
        # the runtime refused a message over the server's limit: no retry can help
        info = pb.ErrorInfo(code="PAYLOAD_TOO_LARGE", message=details, details_json="{}",
                            http_status=413)
    return Failure(code, details, info, retry_after)


def after_failure(state: RetryState, failed: Failure) -> float | None:
    """The wait before the next attempt, None to answer this failure, or raises
    `TransportError` when the service never answered and the attempts are used up."""
    state.attempts += 1
    policy = state.policy
    last = state.attempts >= policy.max_attempts
    if failed.no_answer:  # a proxy's own UNAVAILABLE may still name a retry-after
        if last:
            kind = "TIMEOUT" if failed.code == grpc.StatusCode.DEADLINE_EXCEEDED \
                else "CONNECTION_ERROR"
            raise TransportError(kind, f"gRPC {failed.code.name}: "
                                 f"{failed.details or 'no details'} "
                                 f"(after {state.attempts} attempt(s))",
                                 {"attempts": state.attempts})
        if failed.retry_after is not None:
            return min(failed.retry_after, policy.retry_after_max)
        return policy.backoff(state.attempts, state.rng)
    code = failed.info.code if failed.info is not None else None
    if (last or failed.code not in RETRY_CODES or failed.status not in policy.statuses
            or code in NOT_RETRIED_CODES):
        return None
    if failed.retry_after is not None:
        return min(failed.retry_after, policy.retry_after_max)
    return policy.backoff(state.attempts, state.rng)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class _Base:
    """What the sync and asyncio transports share: target, metadata, deadline, policy."""

    def __init__(self, url: str, policy: RetryPolicy, *, timeout: Any = 30.0,
                 headers: Mapping[str, str] | None = None) -> None:
        self.target, self.tls = grpc_target(url)
        self.policy = policy
        self.timeout = _deadline(timeout)
        headers = dict(headers or {})
        self.metadata = _metadata(headers)
        agent = next((v for k, v in headers.items() if k.lower() == "user-agent"), None)
        self.options = [*CHANNEL_OPTIONS,
                        *([("grpc.primary_user_agent", agent)] if agent else [])]
        #: HTTP's report encoding, kept for the clients' properties: unused here
        #: (reports go as protobuf with packed arrays).
        self.report_encoding: ReportEncoding = "json"
        self.compress_over: int | None = COMPRESS_OVER
        self.closed = False
        self._closing = threading.Event()  # cuts the waits between retries short

    def _answer(self, call: Call, answer: Any, attempts: int, request_id: str | None) -> Reply:
        return Reply(call.status, call.body(answer), "", attempts, request_id)

    def _call_metadata(self, call: Call) -> tuple[tuple[tuple[str, str], ...], str, str]:
        """The metadata of one operation (every retry of it: the client's, and a request
        id unless the caller set one of their own), its request id, and how the retry log
        names the call."""
        metadata = self.metadata
        if not any(k == REQUEST_ID for k, _ in metadata):
            metadata = (*metadata, (REQUEST_ID, new_request_id()))
        request_id = dict(metadata)[REQUEST_ID]
        return metadata, request_id, f"{call.method} (request {request_id})"


class GrpcSyncTransport(_Base):
    """Sends operations as blocking gRPC calls on one channel, with retries."""

    def __init__(self, url: str, policy: RetryPolicy, *, timeout: Any = 30.0,
                 headers: Mapping[str, str] | None = None,
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = ()) -> None:
        super().__init__(url, policy, timeout=timeout, headers=headers)
        channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(),
                                      self.options) if self.tls \
            else grpc.insecure_channel(self.target, self.options)
        self._raw = channel
        self.channel = grpc.intercept_channel(channel, *interceptors) if interceptors \
            else channel
        self._stubs: dict[str, Callable[..., Any]] = {}

    def _stub(self, method: str) -> Callable[..., Any]:
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self.channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=_serialize,
                response_deserializer=response_class(method).FromString)
        return stub

    def send(self, operation: Operation) -> Reply:
        call = encode(operation)
        if self.closed:
            raise _transport.client_closed(call.method)
        stub = self._stub(call.method)
        state = self.policy.for_operation(operation).start()
        metadata, request_id, what = self._call_metadata(call)
        while True:
            try:
                answer = stub(call.message, timeout=self.timeout, metadata=metadata)
            except (grpc.RpcError, ValueError) as exc:  # ValueError: a closed channel
                if self.closed:
                    raise _transport.client_closed(call.method) from None
                if not isinstance(exc, grpc.RpcError):
                    raise
                failed = failure(exc)
                delay = after_failure(state, failed)
                if delay is None:
                    return failed.reply(state.attempts, request_id)
                _transport._log_retry(what, delay, state, f"gRPC {failed.code.name}")
                _transport._sleep(delay, self._closing)
                if self.closed:
                    raise _transport.client_closed(call.method) from None
            else:
                state.attempts += 1
                return self._answer(call, answer, state.attempts, request_id)

    def close(self) -> None:
        self.closed = True
        self._closing.set()
        self._raw.close()


class GrpcAsyncTransport(_Base, _transport.LoopBound):
    """The asyncio twin (a `grpc.aio` channel, opened on first use in the caller's loop)."""

    def __init__(self, url: str, policy: RetryPolicy, *, timeout: Any = 30.0,
                 headers: Mapping[str, str] | None = None,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        _Base.__init__(self, url, policy, timeout=timeout, headers=headers)
        _transport.LoopBound.__init__(self)
        self._interceptors = list(interceptors)
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Callable[..., Any]] = {}

    def _stub(self, method: str) -> Callable[..., Any]:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(
                self.target, grpc.ssl_channel_credentials(), self.options,
                interceptors=self._interceptors) if self.tls \
                else grpc.aio.insecure_channel(self.target, self.options,
                                               interceptors=self._interceptors)
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self._channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=_serialize,
                response_deserializer=response_class(method).FromString)
        return stub

    async def send(self, operation: Operation) -> Reply:
        call = encode(operation)
        if self.closed:
            raise _transport.client_closed(call.method)
        self.check_loop()
        stub = self._stub(call.method)
        state = self.policy.for_operation(operation).start()
        metadata, request_id, what = self._call_metadata(call)
        while True:
            try:
                answer = await stub(call.message, timeout=self.timeout, metadata=metadata)
            except asyncio.CancelledError:
                if self.closed:  # the channel cancels its calls when it closes
                    raise _transport.client_closed(call.method) from None
                raise
            except grpc.RpcError as exc:
                if self.closed:
                    raise _transport.client_closed(call.method) from None
                failed = failure(exc)
                delay = after_failure(state, failed)
                if delay is None:
                    return failed.reply(state.attempts, request_id)
                _transport._log_retry(what, delay, state, f"gRPC {failed.code.name}")
                await _transport._asleep(delay, self._closing)
                if self.closed:
                    raise _transport.client_closed(call.method) from None
            else:
                state.attempts += 1
                return self._answer(call, answer, state.attempts, request_id)

    async def aclose(self) -> None:
        self.closed = True
        self._closing.set()
        channel, self._channel = self._channel, None
        self._stubs.clear()
        if channel is not None:
            await channel.close()
