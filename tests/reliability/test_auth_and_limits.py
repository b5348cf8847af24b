"""Authentication and limits: every write route (enumerated from the app's router, so a
new one cannot be forgotten) refuses a missing, unknown or read-only token; tokens never
reach a log line; every route's body is size-limited; the per-token rate limit answers
429 `RATE_LIMITED` with Retry-After, which the client SDK honours."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from reliability_support import tcp_proxy

import paceline
from api_support import make_client
from paceline import _transport
from paceline_server.api.ratelimit import TokenBuckets
from support import PG_PORT, SPEC, postgres_url, service_process

READER, WRITER = "rd-3f9c1e77d2a04b55", "wr-8b2d6a1f0c9e4d37"
STRANGER = "xx-51e0c7a2b94f4d68"
TOKENS = {READER: "read", WRITER: "write"}
CUR = "/v1/curricula/math"


def api_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every /v1 route, read from the router itself. (Newer
    FastAPI keeps an included router as one entry; `iter_route_contexts` flattens it.)"""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Any = flatten(app.routes) if flatten is not None else app.routes
    found = set()
    for route in routes:
        path = getattr(route, "path", None) or ""
        if path.startswith("/v1/"):
            found |= {(m, path) for m in getattr(route, "methods", None) or () if m != "HEAD"}
    return found


def concrete(path: str) -> str:
    return path.replace("{name}", "math").replace("{run_id}", "run-1")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def authed(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(f"sqlite:///{tmp_path / 'auth.db'}", api_tokens=TOKENS,
                     max_body_bytes=2048) as client:
        assert client.post("/v1/curricula", json=SPEC, headers=bearer(WRITER)).status_code == 201
        assert client.post(f"{CUR}/runs", json={"run_id": "run-1"},
                           headers=bearer(WRITER)).status_code == 201
        report = {"run_id": "run-1", "step": 0, "indices": [1], "rewards": [[[1.0, 2.0]]],
                  "unserved": "accept"}  # a step Paceline did not serve, on request
        assert client.post(f"{CUR}/reports", json=report,
                           headers=bearer(WRITER)).status_code == 200
        yield client


def observed(client: TestClient) -> tuple[bytes, ...]:
    read = bearer(READER)
    return (client.get(f"{CUR}/state", headers=read).content,
            client.get(CUR, headers=read).content,
            client.get(f"{CUR}/runs", headers=read).content,
            client.get("/v1/curricula", headers=read).content)


def test_routes_are_enumerated_completely(authed: TestClient) -> None:
    app: Any = authed.app
    routes = api_routes(app)
    documented = {(method.upper(), path) for path, item in app.openapi()["paths"].items()
                  if path.startswith("/v1/") for method in item}
    assert routes == documented
    assert ("POST", "/v1/curricula/{name}/reports") in routes
    assert len([r for r in routes if r[0] != "GET"]) >= 6


def test_every_write_route_refuses_missing_unknown_and_read_only_tokens(
        authed: TestClient) -> None:
    app: Any = authed.app
    before = observed(authed)
    for method, template in sorted(api_routes(app)):
        path = concrete(template)
        for headers in ({}, bearer(STRANGER), {"Authorization": "Basic " + WRITER},
                        {"Authorization": WRITER}):
            response = authed.request(method, path, json={}, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == "UNAUTHENTICATED"
            assert response.headers["www-authenticate"] == "Bearer"
        response = authed.request(method, path, json={}, headers=bearer(READER))
        if method == "GET":
            assert response.status_code == 200, (method, path, response.text)
        else:
            # Refused before the body is even looked at ({} is not a valid body).
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "FORBIDDEN"
    assert observed(authed) == before


def test_every_route_limits_the_body(authed: TestClient) -> None:
    app: Any = authed.app
    before = observed(authed)
    big = b'{"padding": "' + b"x" * 4096 + b'"}'

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield big[:2000]
        yield big[2000:]

    writes = sorted(r for r in api_routes(app) if r[0] != "GET")
    for method, template in writes:
        for content in (big, chunks()):
            response = authed.request(method, concrete(template), content=content,
                                      headers={**bearer(WRITER),
                                               "Content-Type": "application/json"})
            assert response.status_code == 413, (method, template, response.text)
            assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert observed(authed) == before


def test_tokens_never_reach_the_logs(tmp_path: Path, pg_url: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """A real process at log level debug (access log on), behind a TCP proxy to
    PostgreSQL that is unplugged halfway so that error paths log too; plus the client
    SDK's own logs (retries) and httpx's, captured here."""
    schema = pg_url.split("search_path%3D", 1)[1]
    log = tmp_path / "service.log"
    with tcp_proxy(PG_PORT) as proxy:
        url = postgres_url(schema, port=proxy.port)
        env = {"PACELINE_API_TOKENS": json.dumps(TOKENS), "PACELINE_LOG_LEVEL": "debug"}
        with service_process(url, env=env, log=log) as service:
            caplog.set_level(logging.DEBUG)
            retries = paceline.RetryPolicy(max_attempts=2, backoff_initial=0.01)
            writer = paceline.Client(service.url, WRITER, retries=retries)
            reader = paceline.Client(service.url, READER, retries=retries)
            cur = writer.create_curriculum("logs", SPEC["layout"]["distributions"],
                                           objectives=SPEC["objectives"], batch_size=8)
            run = cur.start_run(run_id="run-1", heartbeat_interval=None)
            run.report(0, run.next_batch(0).indices, [[[1.0, 2.0]] * 2] * 8)
            with pytest.raises(paceline.AuthError):
                reader.curriculum("logs").start_run(heartbeat_interval=None)
            with pytest.raises(paceline.AuthError):
                paceline.Client(service.url, STRANGER, retries=None).curriculum("logs")
            with pytest.raises(paceline.InvalidInput):
                run.report(1, [10_000], [[[1.0, 2.0]]])
            httpx.get(f"{service.url}/v1/curricula", headers={"Authorization": f"Bearer  {WRITER}"})
            proxy.down()  # the database goes away: 503s, warnings, retries
            with pytest.raises(paceline.Unavailable):
                run.next_batch(5)
            assert httpx.get(f"{service.url}/readyz").status_code == 503
            proxy.up()
            writer.close()
            reader.close()
    text = log.read_text() + "\n".join(r.getMessage() for r in caplog.records)
    assert '"POST /v1/curricula/logs/reports HTTP/1.1" 200' in text  # access log is on
    assert "failed: UNAVAILABLE" in text  # the error path logged
    assert "retry 1/1" in text  # the SDK logged its retry
    for token in (READER, WRITER, STRANGER):
        assert token not in text
        assert token[3:] not in text


def test_token_buckets() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0], max_clients=2)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # empty: one token comes in 0.5 s
    assert buckets.take("b") == 0.0  # every client has its own bucket
    now[0] = 0.25
    assert buckets.take("a") == pytest.approx(0.25)
    now[0] = 10.0
    assert [buckets.take("a") for _ in range(4)][3] > 0  # refilled to the burst, no more
    buckets.take("c")  # a third client evicts the least recently seen ("b")
    assert buckets.take("b") == 0.0


def test_rate_limit_per_token(tmp_path: Path) -> None:
    with make_client(f"sqlite:///{tmp_path / 'rl.db'}", api_tokens=TOKENS,
                     rate_limit_per_s=0.5, rate_limit_burst=3) as client:
        for _ in range(3):
            assert client.get("/v1/curricula", headers=bearer(READER)).status_code == 200
        limited = client.get("/v1/curricula", headers=bearer(READER))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "RATE_LIMITED"
        assert int(limited.headers["retry-after"]) == 2  # (1 token) / (0.5 / s)
        assert limited.json()["error"]["details"]["burst"] == 3
        # Another token has its own bucket; the probes and metrics are not limited.
        assert client.get("/v1/curricula", headers=bearer(WRITER)).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        # Unknown tokens share their address's bucket: guessing is throttled too.
        codes = [client.get("/v1/curricula", headers=bearer(f"guess-{i}")).status_code
                 for i in range(4)]
        assert codes == [401, 401, 401, 429]


def test_rate_limit_is_off_by_default(tmp_path: Path) -> None:
    with make_client(f"sqlite:///{tmp_path / 'off.db'}") as client:
        assert all(client.get("/v1/curricula").status_code == 200 for _ in range(50))


def test_client_sdk_rides_out_the_rate_limit(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A real service limiting each client address to 2 requests/s (burst 2): the SDK
    waits what Retry-After says and every call succeeds."""
    waits: list[float] = []

    def sleep(seconds: float, *_: object) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(_transport, "_sleep", sleep)
    env = {"PACELINE_RATE_LIMIT_PER_S": "2", "PACELINE_RATE_LIMIT_BURST": "2"}
    with service_process(f"sqlite:///{tmp_path / 'sdk.db'}", env=env) as service, \
            paceline.Client(service.url, retries=paceline.RetryPolicy(
                max_attempts=4, backoff_initial=0.0, retry_after_max=5.0)) as client:
        started = time.monotonic()
        cur = client.create_curriculum("rl", SPEC["layout"]["distributions"],
                                       objectives=SPEC["objectives"], batch_size=8)
        infos = [cur.refresh() for _ in range(4)]
        elapsed = time.monotonic() - started
        metrics = httpx.get(f"{service.url}/metrics").text
    assert [info.name for info in infos] == ["rl"] * 4
    assert waits and all(wait == 1.0 for wait in waits)  # Retry-After: 1, honoured
    assert elapsed >= 1.0
    limited = re.findall(r'paceline_http_requests_total\{[^}]*status="429"[^}]*\} (\d+)', metrics)
    assert sum(float(n) for n in limited) == len(waits)
