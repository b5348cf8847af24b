"""Request ids over REST: every answer names its call (the caller's plain id, or a fresh
one), refusals by the middlewares too, the service's log line about a failed call names
it, and the client sends one id per operation (the same on each retry) and puts it on
the errors it raises."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

import paceline
from api_support import make_client
from support import CLIENT_SPEC, FaultInjector, status, threaded_service

FRESH = re.compile(r"[0-9a-f]{32}")


def test_every_answer_names_its_request(tmp_path: Path) -> None:
    api = make_client(f"sqlite:///{tmp_path / 'ids.db'}", max_body_bytes=1024)
    ok, again = api.get("/healthz"), api.get("/healthz")
    assert FRESH.fullmatch(ok.headers["x-request-id"])
    assert ok.headers["x-request-id"] != again.headers["x-request-id"]
    missing = api.get("/v1/curricula/nope", headers={"X-Request-ID": "trainer-7.step:12"})
    assert missing.status_code == 404
    assert missing.headers["x-request-id"] == "trainer-7.step:12"
    too_big = api.post("/v1/curricula", content=b"{" * 2048,
                       headers={"content-type": "application/json", "x-request-id": "big"})
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "big"
    for hostile in (b"a b", b"x" * 129, b"line\tINFO forged", "é".encode()):
        answer = api.get("/healthz", headers=[(b"X-Request-ID", hostile)])
        assert FRESH.fullmatch(answer.headers["x-request-id"]), hostile


def test_a_failed_call_is_logged_under_its_request(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    api = make_client(f"sqlite:///{tmp_path / 'ids.db'}")

    def boom() -> None:
        raise RuntimeError("a bug")

    api.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="paceline_server.api"):
        answer = api.get("/boom", headers={"X-Request-ID": "find-me-42"})
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "find-me-42"
    assert any("(request find-me-42)" in r.getMessage() for r in caplog.records)


class Recording(FaultInjector):
    """Passes requests on (after the planned faults) and keeps each one's request id."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.ids.append(request.headers["x-request-id"])
        return super().handle_request(request)


def test_the_client_sends_one_id_per_operation_and_names_it_on_errors(tmp_path: Path) -> None:
    with threaded_service(f"sqlite:///{tmp_path / 'ids.db'}") as url:
        recording = Recording()
        fast = paceline.RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
        with paceline.Client(url, transport=recording, retries=fast) as client:
            recording.inject(status("/v1/curricula", 503))
            client.create_curriculum("ids", **CLIENT_SPEC)
            first, retried = recording.ids
            assert first == retried and FRESH.fullmatch(first)  # one call, one id

            with pytest.raises(paceline.NotFound) as missing:
                client.curriculum("nope").state()
            assert missing.value.request_id == recording.ids[-1]
            assert "request_id='" in repr(missing.value)
            assert len(set(recording.ids)) == 2

        own = paceline.Client(url, headers={"X-Request-ID": "my-job-1"})
        with own, pytest.raises(paceline.NotFound) as mine:
            own.curriculum("nope").state()
        assert mine.value.request_id == "my-job-1"  # a caller's own id is kept
