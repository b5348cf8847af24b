"""HTTP with retries. The retry policy is plain code shared by the sync and async
transports; only the sleeping and the sending differ.

What is retried: connection failures and timeouts, and the statuses that mean "try again
later" (408, 429, 502, 503, 504) — except a 503 that says the database schema is outdated,
which no retry fixes. Waits use exponential backoff with full jitter (AWS architecture
blog, "Exponential Backoff and Jitter") unless the response names a `Retry-After`, which
is honoured (seconds or HTTP-date, capped). An operation is encoded once (`_http`) and
re-sent as is, so its body and idempotency key are identical on every attempt.

`RetryPolicy`, `Reply` and the retry bookkeeping are shared with the gRPC transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import httpx

from paceline._http import Request, request
from paceline._operations import Operation
from paceline._payloads import COMPRESS_OVER, ReportEncoding
from paceline.errors import PacelineError, TransportError, error_from_response

__all__ = [
    "RETRY_STATUSES",
    "AsyncTransport",
    "Reply",
    "Request",
    "RetryPolicy",
    "RetryState",
    "SyncTransport",
    "parse_retry_after",
]

logger = logging.getLogger("paceline")

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
#: 503s that retrying cannot fix.
NOT_RETRIED_CODES = frozenset({"SCHEMA_OUTDATED"})
#: httpx failures after which the same request may succeed.
RETRY_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)


#: The largest power of two a backoff ceiling takes (the largest a float holds).
MAX_DOUBLINGS = 1023


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. `max_attempts` counts the first try."""

    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    retry_after_max: float = 60.0
    statuses: frozenset[int] = RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (self.backoff_initial >= 0 and self.backoff_max >= 0
                and self.retry_after_max >= 0):
            raise ValueError("backoff and Retry-After limits must be non-negative")

    @classmethod
    def of(cls, retries: int | RetryPolicy | None) -> RetryPolicy:
        """`retries` as given to a client: a number of retries after the first attempt,
        a policy, or None for no retries."""
        if isinstance(retries, RetryPolicy):
            return retries
        if retries is None:
            return cls(max_attempts=1)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer; got {retries!r}")
        return cls(max_attempts=retries + 1)

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(backoff_max, backoff_initial * 2**(retry-1))]
        for the `retry`-th retry (1-based), so simultaneous clients spread out. The
        exponent stops growing at 1023: `2.0 ** 1024` raises OverflowError, which ended a
        call with a long retry budget after its 1024th retry."""
        doublings = min(max(retry - 1, 0), MAX_DOUBLINGS)
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** doublings)
        return (rng or random).uniform(0.0, ceiling)

    def start(self, rng: random.Random | None = None) -> RetryState:
        return RetryState(self, rng)

    def for_operation(self, operation: Operation) -> RetryPolicy:
        """This policy, or a single attempt for an operation never retried."""
        return SINGLE_ATTEMPT if operation.single_attempt else self


SINGLE_ATTEMPT = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date
    (RFC 9110 10.2.3). None when absent or unparsable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class RetryState:
    """The retry bookkeeping of one call: decides after each attempt whether to retry
    and how long to wait first."""

    policy: RetryPolicy
    rng: random.Random | None = None
    attempts: int = 0

    def after_response(self, response: httpx.Response) -> float | None:
        """The wait before the next attempt, or None to return this response."""
        self.attempts += 1
        if response.status_code not in self.policy.statuses:
            return None
        if self.attempts >= self.policy.max_attempts:
            return None
        if response.status_code == 503 and _error_code(response) in NOT_RETRIED_CODES:
            return None
        after = parse_retry_after(response.headers.get("retry-after"))
        if after is not None:
            return min(after, self.policy.retry_after_max)
        return self.policy.backoff(self.attempts, self.rng)

    def after_error(self, exc: httpx.RequestError) -> float:
        """The wait before the next attempt; raises `TransportError` when the failure is
        not transient (a local error, or an answer that could not be read: a body that
        does not decode as its Content-Encoding says) or the attempts are used up."""
        self.attempts += 1
        if not isinstance(exc, RETRY_ERRORS) or self.attempts >= self.policy.max_attempts:
            code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_ERROR"
            raise TransportError(
                code, f"{type(exc).__name__}: {exc or 'no details'} "
                f"(after {self.attempts} attempt(s))",
                {"attempts": self.attempts}) from exc
        return self.policy.backoff(self.attempts, self.rng)


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


@dataclass(frozen=True)
class Reply:
    """An answer, whatever the transport: the HTTP status (or its equivalent), the body
    in REST's JSON shape, and how many attempts it took (callers use that to recognise
    their own earlier, lost attempt)."""

    status: int
    body: Any
    text: str
    attempts: int
    request_id: str | None = None  # the id the call was sent (and answered) under

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self) -> PacelineError:
        return error_from_response(self.status, self.body, self.text, self.request_id)

    def json(self) -> Any:
        """The body of a successful reply; raises the mapped error otherwise."""
        if not self.ok:
            raise self.error()
        return self.body


def _reply(response: httpx.Response, attempts: int) -> Reply:
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = None
    return Reply(response.status_code, body, response.text if body is None else "", attempts,
                 response.headers.get(REQUEST_ID) or response.request.headers.get(REQUEST_ID))


#: The header (gRPC: metadata key) naming a call for the service's logs.
REQUEST_ID = "x-request-id"


def new_request_id() -> str:
    """One id per operation, sent again on each of its retries (the service's log then
    shows every attempt of the call under one id)."""
    return uuid.uuid4().hex


#: Absolute URLs kept per transport (a client's curricula and runs: a few paths).
MAX_URLS = 1024


def _build(http: httpx.Client | httpx.AsyncClient, request: Request,
           urls: dict[str, httpx.URL]) -> httpx.Request:
    """The httpx request. The absolute URL of each path is worked out once (by httpx's
    own joining with the base URL) and integer query parameters are appended as text:
    parsing URLs was a third of the client's own time per report."""
    url = urls.get(request.path)
    if url is None:
        if len(urls) >= MAX_URLS:
            urls.clear()
        url = urls[request.path] = http.build_request("GET", request.path).url
    params: dict[str, str] | None = dict(request.params) or None
    if params is not None and all(v.isdigit() for v in params.values()):
        url = httpx.URL(f"{url}?{urlencode(params)}")
        params = None
    headers = dict(request.headers)
    if REQUEST_ID not in http.headers:  # a caller's own id, set on the client, is kept
        headers[REQUEST_ID] = new_request_id()
    return http.build_request(request.method, url, json=request.json,
                              content=request.content, headers=headers, params=params)


def _what(request: Request | httpx.Request) -> str:
    if isinstance(request, httpx.Request):
        return f"{request.method} {request.url.path} (request {request.headers[REQUEST_ID]})"
    return f"{request.method} {request.path}"


def _log_retry(what: str, delay: float, state: RetryState, why: str) -> None:
    logger.info("paceline: %s failed (%s); retry %d/%d in %.2fs", what, why,
                state.attempts, state.policy.max_attempts - 1, delay)


def _sleep(seconds: float, closing: threading.Event | None = None) -> None:
    """The wait between attempts, cut short when `closing` is set (the client closed)."""
    if closing is None:
        time.sleep(seconds)
    else:
        closing.wait(seconds)


#: How often an asyncio wait between attempts looks whether the client was closed.
CLOSED_POLL_S = 0.05


async def _asleep(seconds: float, closing: threading.Event | None = None) -> None:
    """The asyncio twin of `_sleep`, cut short once `closing` is set (looked at every
    `CLOSED_POLL_S`: an asyncio.Event would tie the client to one event loop)."""
    if closing is None:
        await asyncio.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while not closing.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, CLOSED_POLL_S))


class LoopBound:
    """An asyncio transport's connections belong to the event loop that opened them:
    used from another loop (a second `asyncio.run`), a pooled connection failed deep in
    the network stack (`RuntimeError: Event loop is closed`, or a hang). The loop of the
    first call is remembered and any other refused with a clear error."""

    def __init__(self) -> None:
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def other_loop(self) -> bool:
        """Whether this transport's connections belong to another event loop."""
        bound = None if self._loop is None else self._loop()
        return bound is not None and bound is not asyncio.get_running_loop()

    def check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        bound = None if self._loop is None else self._loop()
        if bound is None:  # first use (or that loop is gone, and its connections with it)
            self._loop = weakref.ref(loop)
        elif bound is not loop:
            raise RuntimeError(
                "this paceline.AsyncClient is used in another event loop than the one it "
                "first ran in (its connections belong to that loop"
                f"{', which is closed' if bound.is_closed() else ''}): "
                "create an AsyncClient in each event loop")


class _Encoding:
    """How reports go out over HTTP (the client's `report_encoding` and
    `compress_over`, which it forwards here)."""

    def __init__(self) -> None:
        self.report_encoding: ReportEncoding = "json"
        self.compress_over: int | None = COMPRESS_OVER

    def request(self, operation: Operation) -> Request:
        return request(operation, self.report_encoding, self.compress_over)


def client_closed(what: str) -> TransportError:
    """The error of a call on a closed client, or one in flight when it was closed:
    the same on every transport (httpx raised a bare RuntimeError, gRPC a
    `GRPC_CANCELLED` error or, under asyncio, a CancelledError no one had asked for)."""
    return TransportError("CLIENT_CLOSED", f"{what}: the client was closed", {})


class _OpenSockets:
    """The sockets this client's connection pool opened, so that `close()` can shut them
    down: a synchronous call blocked reading from a server that does not answer is
    woken only by its socket (closing httpx's pool leaves a connection in use alone).
    httpcore reports each new connection's stream through the request's documented
    `trace` extension; a socket closed meanwhile is forgotten (weak references)."""

    def __init__(self) -> None:
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # Over TLS both streams are recorded: the TLS one is what wakes a reader (the
        # TCP socket handed its descriptor over to it).
        if event.endswith((".connect_tcp.complete", ".connect_unix_socket.complete",
                           ".start_tls.complete")):
            stream = info.get("return_value")
            if stream is not None:
                with self._lock:
                    self._streams.add(stream)

    def shut_down(self) -> None:
        """Shut every recorded socket down (both directions): a thread blocked in recv
        returns at once, and its call raises CLIENT_CLOSED."""
        with self._lock:
            streams = list(self._streams)
            self._streams.clear()
        for stream in streams:
            sock = stream.get_extra_info("socket")
            if sock is None:
                continue
            # Already closed (or a TCP socket a TLS one took over): nothing to wake.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class SyncTransport(_Encoding):
    """Sends operations as REST requests through an `httpx.Client` (a connection pool,
    or any `httpx.BaseTransport` a caller plugs in) with retries."""

    def __init__(self, http: httpx.Client, policy: RetryPolicy,
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.http = http
        self.policy = policy
        self._on_close = on_close
        self._urls: dict[str, httpx.URL] = {}
        self.closed = False
        self._closing = threading.Event()
        self._sockets = _OpenSockets()

    def send(self, operation: Operation) -> Reply:
        request = self.request(operation)
        if self.closed:
            raise client_closed(_what(request))
        built = _build(self.http, request, self._urls)
        built.extensions["trace"] = self._sockets.trace
        state = self.policy.for_operation(operation).start()
        while True:
            try:
                response = self.http.send(built)
            except (httpx.RequestError, RuntimeError) as exc:
                if self.closed:
                    raise client_closed(_what(request)) from None
                if not isinstance(exc, httpx.RequestError):
                    raise
                delay = state.after_error(exc)
                _log_retry(_what(built), delay, state, type(exc).__name__)
            else:
                wait = state.after_response(response)
                if wait is None:
                    return _reply(response, state.attempts)
                delay = wait
                _log_retry(_what(built), delay, state, f"HTTP {response.status_code}")
            _sleep(delay, self._closing)
            if self.closed:
                raise client_closed(_what(request))

    def close(self) -> None:
        self.closed = True
        self._closing.set()
        try:
            self._sockets.shut_down()
            self.http.close()
        finally:
            if self._on_close is not None:
                self._on_close()


class AsyncTransport(_Encoding, LoopBound):
    """The asyncio twin of `SyncTransport` (same policy, `asyncio.sleep` between tries)."""

    def __init__(self, http: httpx.AsyncClient, policy: RetryPolicy,
                 on_close: Callable[[], None] | None = None) -> None:
        _Encoding.__init__(self)
        LoopBound.__init__(self)
        self.http = http
        self.policy = policy
        self._on_close = on_close
        self._urls: dict[str, httpx.URL] = {}
        self.closed = False
        self._closing = threading.Event()  # cuts the waits between retries short

    async def send(self, operation: Operation) -> Reply:
        request = self.request(operation)
        if self.closed:
            raise client_closed(_what(request))
        self.check_loop()
        built = _build(self.http, request, self._urls)
        state = self.policy.for_operation(operation).start()
        while True:
            try:
                response = await self.http.send(built)
            except (httpx.RequestError, RuntimeError) as exc:
                if self.closed:
                    raise client_closed(_what(request)) from None
                if not isinstance(exc, httpx.RequestError):
                    raise
                delay = state.after_error(exc)
                _log_retry(_what(built), delay, state, type(exc).__name__)
            else:
                wait = state.after_response(response)
                if wait is None:
                    return _reply(response, state.attempts)
                delay = wait
                _log_retry(_what(built), delay, state, f"HTTP {response.status_code}")
            await _asleep(delay, self._closing)
            if self.closed:
                raise client_closed(_what(request))

    async def aclose(self) -> None:
        self.closed = True
        self._closing.set()
        try:
            try:
                await self.http.aclose()
            except RuntimeError:  # connections of another (closed) loop: gone with it
                if not self.other_loop():
                    raise
        finally:
            if self._on_close is not None:
                self._on_close()
