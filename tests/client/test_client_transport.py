"""The retry policy, Retry-After parsing, error mapping, and what goes on the wire
(headers, idempotency keys across retries, encodings) — against httpx mock transports."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import msgpack
import pydantic
import pytest

import paceline
from paceline import _transport
from paceline._transport import RetryPolicy, RetryState, parse_retry_after
from paceline.errors import error_from_response


class TestRetryAfter:
    @pytest.mark.parametrize(("value", "seconds"),
                             [("3", 3.0), ("0", 0.0), (" 1.5 ", 1.5), ("-1", None),
                              ("soon", None), ("", None), (None, None), ("inf", None)])
    def test_delta_seconds(self, value: str | None, seconds: float | None) -> None:
        assert parse_retry_after(value) == seconds

    def test_http_date(self) -> None:
        now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
        later = format_datetime(now + timedelta(seconds=10), usegmt=True)
        assert parse_retry_after(later, now) == pytest.approx(10.0)
        earlier = format_datetime(now - timedelta(seconds=10), usegmt=True)
        assert parse_retry_after(earlier, now) == 0.0


def response(status: int, headers: dict[str, str] | None = None,
             code: str = "UNAVAILABLE") -> httpx.Response:
    return httpx.Response(status, headers=headers,
                          json={"error": {"code": code, "message": "m", "details": {}}})


class TestPolicy:
    def test_of(self) -> None:
        assert RetryPolicy.of(0).max_attempts == 1
        assert RetryPolicy.of(None).max_attempts == 1
        assert RetryPolicy.of(3).max_attempts == 4
        custom = RetryPolicy(max_attempts=2)
        assert RetryPolicy.of(custom) is custom
        with pytest.raises(ValueError, match="non-negative"):
            RetryPolicy.of(-1)

    def test_full_jitter_is_bounded_and_grows(self) -> None:
        policy = RetryPolicy(backoff_initial=0.5, backoff_max=3.0)
        rng = random.Random(0)
        for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
            delays = [policy.backoff(retry, rng) for _ in range(200)]
            assert all(0.0 <= d <= ceiling for d in delays)
            assert max(delays) > 0.8 * ceiling  # spread over the whole interval

    @pytest.mark.parametrize("retry", [1024, 1025, 5000])
    @pytest.mark.parametrize("initial", [0.0, 0.5, 100.0])
    def test_backoff_after_a_thousand_retries(self, retry: int, initial: float) -> None:
        """A patient policy (a trainer riding out a long outage) keeps its ceiling: the
        1025th retry raised OverflowError from `2.0 ** 1024`."""
        policy = RetryPolicy(max_attempts=10_000, backoff_initial=initial, backoff_max=2.0)
        delay = policy.backoff(retry, random.Random(0))
        assert 0.0 <= delay <= (2.0 if initial else 0.0)

    @pytest.mark.parametrize("code", [408, 429, 502, 503, 504])
    def test_retried_statuses(self, code: int) -> None:
        state = RetryPolicy(max_attempts=3, backoff_initial=0.1).start(random.Random(1))
        delay = state.after_response(response(code))
        assert delay is not None
        assert 0.0 <= delay <= 0.1

    @pytest.mark.parametrize("code", [200, 400, 404, 409, 422, 500])
    def test_other_statuses_are_final(self, code: int) -> None:
        assert RetryPolicy().start().after_response(response(code)) is None

    def test_retry_after_is_honoured_and_capped(self) -> None:
        state = RetryPolicy(retry_after_max=30).start()
        assert state.after_response(response(503, {"Retry-After": "2"})) == 2.0
        assert state.after_response(response(429, {"Retry-After": "3600"})) == 30.0

    def test_schema_outdated_is_not_retried(self) -> None:
        assert RetryPolicy().start().after_response(
            response(503, code="SCHEMA_OUTDATED")) is None

    def test_attempts_run_out(self) -> None:
        state = RetryState(RetryPolicy(max_attempts=2, backoff_initial=0))
        assert state.after_response(response(503)) == 0.0
        assert state.after_response(response(503)) is None
        assert state.attempts == 2

    def test_connection_errors(self) -> None:
        state = RetryPolicy(max_attempts=2, backoff_initial=0).start()
        assert state.after_error(httpx.ConnectError("x")) == 0.0
        with pytest.raises(paceline.TransportError) as info:
            state.after_error(httpx.ReadTimeout("x"))
        assert info.value.code == "TIMEOUT"
        assert info.value.details == {"attempts": 2}

    def test_local_errors_are_not_retried(self) -> None:
        with pytest.raises(paceline.TransportError) as info:
            RetryPolicy().start().after_error(httpx.UnsupportedProtocol("ftp"))
        assert info.value.code == "CONNECTION_ERROR"


class TestErrorMapping:
    @pytest.mark.parametrize(("code", "status", "cls"), [
        ("CURRICULUM_NOT_FOUND", 404, paceline.NotFound),
        ("RUN_NOT_FOUND", 404, paceline.NotFound),
        ("NOT_FOUND", 404, paceline.NotFound),
        ("CURRICULUM_EXISTS", 409, paceline.Conflict),
        ("IDEMPOTENCY_CONFLICT", 409, paceline.Conflict),
        ("INVALID_SPEC", 422, paceline.InvalidInput),
        ("UNKNOWN_STRATEGY", 422, paceline.InvalidInput),
        ("INVALID_PARAMS", 422, paceline.InvalidInput),
        ("INVALID_REPORT", 422, paceline.InvalidInput),
        ("INDEX_OUT_OF_RANGE", 422, paceline.InvalidInput),
        ("INVALID_REQUEST", 400, paceline.InvalidInput),
        ("PAYLOAD_TOO_LARGE", 413, paceline.InvalidInput),
        ("UNSUPPORTED_MEDIA_TYPE", 415, paceline.InvalidInput),
        ("UNAUTHENTICATED", 401, paceline.AuthError),
        ("FORBIDDEN", 403, paceline.AuthError),
        ("UNAVAILABLE", 503, paceline.Unavailable),
        ("SCHEMA_OUTDATED", 503, paceline.Unavailable),
        ("SOMETHING_NEW", 404, paceline.NotFound),
        ("SOMETHING_NEW", 507, paceline.Unavailable),
        ("SOMETHING_NEW", 418, paceline.PacelineError),
    ])
    def test_codes(self, code: str, status: int, cls: type[paceline.PacelineError]) -> None:
        error = error_from_response(status, {"error": {"code": code, "message": "why",
                                                       "details": {"field": "x"}}})
        assert type(error) is cls
        assert (error.code, error.message, error.details, error.status) == (
            code, "why", {"field": "x"}, status)
        assert "why" in str(error)

    def test_a_proxy_page_still_maps(self) -> None:
        error = error_from_response(502, None, "<html>Bad Gateway</html>")
        assert isinstance(error, paceline.Unavailable)
        assert error.code == "HTTP_502"
        assert "Bad Gateway" in error.message

    def test_invalid_input_is_a_value_error(self) -> None:
        assert issubclass(paceline.InvalidInput, ValueError)
        assert issubclass(paceline.NotFound, LookupError)


# ----------------------------------------------------------------- on the wire
CURRICULUM = {"name": "math", "spec": {}, "created_at": "2025-01-01T00:00:00Z", "seq": 0,
              "num_samples": 100, "distributions": ["easy", "hard"],
              "objectives": ["acc", "len"]}
RUN = {"run_id": "r", "curriculum": "math", "created_at": "2025-01-01T00:00:00Z",
       "last_heartbeat": "2025-01-01T00:00:00Z", "stale": False, "metadata": {}}


class Recorder:
    """A fake service: records requests and answers from a script (then 200s)."""

    def __init__(self, *script: int) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            return response(self.script.pop(0), {"Retry-After": "0"})
        path = request.url.path
        if path.endswith("/reports"):
            return httpx.Response(200, json={"seq": len(self.requests), "replayed": False})
        if path.endswith("/runs"):
            return httpx.Response(201, json=RUN)
        return httpx.Response(200, json=CURRICULUM)

    def body(self, index: int) -> Any:
        request = self.requests[index]
        raw = request.content
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        if request.headers["content-type"] == "application/msgpack":
            return msgpack.unpackb(raw)
        return json.loads(raw)


def mock_client(recorder: Recorder, **options: Any) -> paceline.Client:
    return paceline.Client("http://paceline.test/v1/", token="secret",
                           transport=httpx.MockTransport(recorder),
                           retries=RetryPolicy(max_attempts=3, backoff_initial=0), **options)


def test_idempotency_key_is_stable_across_retries_and_fresh_per_call() -> None:
    recorder = Recorder()
    with mock_client(recorder) as client:
        run = client.curriculum("math").start_run("r", heartbeat_interval=None)
        recorder.script = [503, 502]
        run.report(4, indices=[1], rewards=[[[1.0, 2.0]]])
        run.report(4, indices=[1], rewards=[[[1.0, 2.0]]])
    reports = [r for r in recorder.requests if r.url.path.endswith("/reports")]
    keys = [r.headers["idempotency-key"] for r in reports]
    assert len(keys) == 4
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert keys[0].startswith("r/4/")
    assert all(r.content == reports[0].content for r in reports)
    first = recorder.requests[0]
    assert first.url == "http://paceline.test/v1/curricula/math"
    assert first.headers["authorization"] == "Bearer secret"
    assert first.headers["user-agent"] == f"paceline-client/{paceline.__version__}"


def test_own_idempotency_key() -> None:
    recorder = Recorder()
    with mock_client(recorder) as client:
        run = client.curriculum("math").start_run("r", heartbeat_interval=None)
        run.report(0, [1], [[[1.0, 2.0]]], idempotency_key="r/step-0")
    assert recorder.requests[-1].headers["idempotency-key"] == "r/step-0"


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_large_reports_are_compressed(encoding: str) -> None:
    recorder = Recorder()
    with mock_client(recorder, compress_over=1024, report_encoding=encoding) as client:
        run = client.curriculum("math").start_run("r", heartbeat_interval=None)
        run.report(0, [1], [[[0.5, 1.0]] * 4])
        run.report(1, list(range(50)), [[[0.5, 1.0]] * 8] * 50)
    small, large = recorder.requests[-2], recorder.requests[-1]
    assert "content-encoding" not in small.headers
    assert large.headers["content-encoding"] == "gzip"
    assert large.headers["content-type"] == f"application/{encoding}"
    assert recorder.body(-1)["indices"] == list(range(50))
    assert recorder.body(-2) == {"run_id": "r", "step": 0, "indices": [1],
                                 "rewards": [[[0.5, 1.0]] * 4]}


def test_exhausted_retries_raise_the_last_error() -> None:
    recorder = Recorder(503, 503, 503, 503)
    with mock_client(recorder) as client, pytest.raises(paceline.Unavailable) as info:
        client.curriculum("math")
    assert info.value.status == 503
    assert len(recorder.requests) == 3


def test_url_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACELINE_URL", "http://elsewhere:9000")
    monkeypatch.setenv("PACELINE_TOKEN", "env-token")
    recorder = Recorder()
    with paceline.Client(transport=httpx.MockTransport(recorder)) as client:
        client.curriculum("math")
    assert str(recorder.requests[0].url) == "http://elsewhere:9000/v1/curricula/math"
    assert recorder.requests[0].headers["authorization"] == "Bearer env-token"


def test_a_long_outage_ends_in_the_clients_own_error() -> None:
    """More than 1024 failed attempts still end in `TransportError` once the policy's
    attempts are used up (the backoff raised OverflowError at the 1025th retry)."""
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    policy = RetryPolicy(max_attempts=1030, backoff_initial=0.0, backoff_max=0.0)
    with paceline.Client("http://x", transport=httpx.MockTransport(refuse),
                         retries=policy) as client, \
            pytest.raises(paceline.TransportError) as info:
        client.curriculum("math")
    assert info.value.code == "CONNECTION_ERROR"
    assert info.value.details == {"attempts": 1030}


def test_closed_client_refuses() -> None:
    client = mock_client(Recorder())
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.curriculum("math")


def test_sleeps_between_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(_transport, "_sleep", lambda seconds, *_: slept.append(seconds))
    recorder = Recorder()
    recorder.script = []
    with paceline.Client("http://x", transport=httpx.MockTransport(recorder),
                         retries=RetryPolicy(max_attempts=3, backoff_initial=0.2)) as client:
        recorder.script = [502, 503]
        client.curriculum("math")
    assert slept == [0.0, 0.0]  # Retry-After: 0 wins over the backoff


@pytest.mark.parametrize("base", ["http://paceline.test", "http://paceline.test/prefix/"])
def test_urls_are_httpx_own(base: str) -> None:
    """The HTTP transport works each path's absolute URL out once and appends integer
    query parameters itself: every URL is the one httpx builds from base URL, path and
    parameters (a base path kept, a name quoted, text parameters encoded by httpx)."""
    recorder = Recorder()
    name = "a b/ç?"
    with paceline.Client(base, transport=httpx.MockTransport(recorder), retries=0) as client:
        info = client.curriculum(name).info  # the fake answers "math"
        cur = paceline.Curriculum(client, info.model_copy(update={"name": name}))
        run = cur.start_run("r", heartbeat_interval=None)
        run.report(3, [1], [[[1.0, 2.0]]], next_step=4, next_size=2)
        run.report(5, [1], [[[1.0, 2.0]]])
        with pytest.raises(pydantic.ValidationError):  # the fake answers no history
            cur.history(every=10, since=0)
        cur.delete()
        with pytest.raises(KeyError):  # ... nor a listing
            client.list_curricula()
    reference = httpx.Client(base_url=base)
    quoted = "a%20b%2F%C3%A7%3F"
    expected = [
        reference.build_request("GET", f"/v1/curricula/{quoted}"),
        reference.build_request("POST", f"/v1/curricula/{quoted}/runs"),
        reference.build_request("POST", f"/v1/curricula/{quoted}/reports",
                                params={"next_step": "4", "next_size": "2"}),
        reference.build_request("POST", f"/v1/curricula/{quoted}/reports"),
        reference.build_request("GET", f"/v1/curricula/{quoted}/history",
                                params={"every": "10", "since": "0"}),
        reference.build_request("DELETE", f"/v1/curricula/{quoted}",
                                params={"confirm": name}),
        reference.build_request("GET", "/v1/curricula", params={"limit": "100",
                                                               "offset": "0"}),
    ]
    assert [(r.method, str(r.url)) for r in recorder.requests] == \
        [(r.method, str(r.url)) for r in expected]


def corrupt_gzip(request: httpx.Request) -> httpx.Response:
    """A proxy that says gzip and sends something else."""
    return httpx.Response(200, headers={"Content-Encoding": "gzip",
                                        "Content-Type": "application/json"},
                          content=b"not gzip")


def test_an_unreadable_answer_is_the_clients_own_error() -> None:
    """httpx's DecodingError (a body that does not decode as its Content-Encoding says)
    is not an httpx.TransportError and reached the caller as is."""
    with paceline.Client("http://x", transport=httpx.MockTransport(corrupt_gzip),
                         retries=RetryPolicy(max_attempts=3, backoff_initial=0)) as client, \
            pytest.raises(paceline.TransportError) as info:
        client.curriculum("math")
    assert info.value.code == "CONNECTION_ERROR"
    assert "DecodingError" in info.value.message


def test_an_unreadable_answer_is_the_clients_own_error_async() -> None:
    async def body() -> paceline.TransportError:
        async with paceline.AsyncClient(
                "http://x", transport=httpx.MockTransport(corrupt_gzip),
                retries=RetryPolicy(max_attempts=3, backoff_initial=0)) as client:
            with pytest.raises(paceline.TransportError) as info:
                await client.curriculum("math")
        return info.value

    error = asyncio.run(body())
    assert error.code == "CONNECTION_ERROR"
    assert "DecodingError" in error.message


@pytest.mark.parametrize("change", [{"indices": [2**70]}, {"step": 2**70},
                                    {"rewards": [[[2**70, 1]]]}])
def test_msgpack_refuses_integers_beyond_64_bits(change: dict[str, Any]) -> None:
    """What msgpack cannot carry is InvalidInput INVALID_REPORT, the code the service
    gives the same report as JSON (msgpack's OverflowError reached the caller)."""
    recorder = Recorder()
    with mock_client(recorder, report_encoding="msgpack") as client:
        run = client.curriculum("math").start_run("r", heartbeat_interval=None)
        sent = len(recorder.requests)
        report: dict[str, Any] = {"step": 0, "indices": [1], "rewards": [[[1.0, 2.0]]],
                                  **change}
        with pytest.raises(paceline.InvalidInput) as info:
            run.report(**report)
    assert info.value.code == "INVALID_REPORT"
    assert len(recorder.requests) == sent
