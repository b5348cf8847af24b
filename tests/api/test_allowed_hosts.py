"""DNS rebinding: a page of `http://evil.example:8000` whose name is then pointed at
127.0.0.1 is same-origin with a local service for the browser, so the cross-site check
(test_cross_site.py) let it read the API and the dashboard's and write reports and
imports. Its requests still say `Host: evil.example:8000`: `serve` on a loopback address
with authentication off answers only to the loopback names (PACELINE_ALLOWED_HOSTS).

`serve` runs here with uvicorn.run replaced by a function that drives the app it was
given, so what is checked is the app `serve` builds, on the address it was told."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cli_support import fail
from paceline_server.api.app import create_app
from paceline_server.api.hosts import AllowedHosts, requested_host
from paceline_server.cli import main
from paceline_server.settings import Settings
from support import SPEC

REBOUND = "evil.example:8000"
LOOPBACK_VARIANTS = ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:9",
                     "[::1]", "[::1]:8000", "[0:0:0:0:0:0:0:1]:8000", "LocalHost.:8000"]
#: Requests a rebinding page would make: the API, the dashboard, its API, the probes.
READS = ["/v1/curricula", "/v1/curricula/math/state", "/ui/", "/ui/api/overview",
         "/healthz", "/metrics", "/openapi.json"]

Drive = Callable[[FastAPI], Any]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PACELINE_ALLOWED_HOSTS from outside, and the one `serve --workers` exports is
    removed afterwards (set then deleted, so that the monkeypatch restores it)."""
    for name in ("PACELINE_ALLOWED_HOSTS", "PACELINE_API_TOKENS", "PACELINE_HOST",
                 "PACELINE_DATABASE_URL"):
        monkeypatch.setenv(name, "-")
        monkeypatch.delenv(name)
    return monkeypatch


def serve(monkeypatch: pytest.MonkeyPatch, url: str, drive: Drive, *argv: str) -> Any:
    """Run `serve` (`argv`: its flags) with `drive(app)` in place of uvicorn's server;
    `drive`'s result. With --workers, the app is built as a worker builds it: by the
    factory, from the environment `serve` leaves it."""
    result: list[Any] = []

    def run(app: FastAPI | str, **options: Any) -> None:
        if isinstance(app, str):
            assert app == "paceline_server.api.app:create_app" and options["factory"]
            app = create_app()
        with TestClient(app):  # its lifespan, as uvicorn runs it
            result.append(drive(app))

    monkeypatch.setattr(uvicorn, "run", run)
    assert main(["--database-url", url, "serve", *argv]) == 0
    return result[0]


def answers(app: FastAPI, host: str, paths: list[str] = READS,
            headers: Mapping[str, str] | None = None) -> dict[str, tuple[int, str]]:
    """(status, error code or "") of a GET of each path with `Host: host`."""
    found = {}
    with TestClient(app, base_url=f"http://{host}") as client:
        for path in paths:
            answer = client.get(path, headers=headers)
            code = answer.json()["error"]["code"] if answer.status_code >= 400 else ""
            found[path] = (answer.status_code, code)
    return found


def writes(app: FastAPI, host: str) -> list[tuple[int, str]]:
    """A rebinding page's writes (same-origin for the browser): create, import, report."""
    with TestClient(app, base_url=f"http://{host}") as client:
        origin = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        done = [client.post("/v1/curricula", json=SPEC, headers=origin),
                client.post("/v1/imports", content=b"{}", headers=origin),
                client.post("/v1/curricula/math/reports", content=b"{}", headers=origin)]
        return [(a.status_code, a.json()["error"]["code"] if a.status_code >= 400 else "")
                for a in done]


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'p.db'}"


def test_serve_on_loopback_without_auth_refuses_a_rebound_host(
        tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    def drive(app: FastAPI) -> Any:
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            curricula = client.get("/v1/curricula").json()
        return answers(app, REBOUND), writes(app, REBOUND), curricula

    reads, done, curricula = serve(env, url(tmp_path), drive)
    assert reads == dict.fromkeys(READS, (421, "HOST_NOT_ALLOWED")), reads
    assert done == [(421, "HOST_NOT_ALLOWED")] * 3
    assert curricula == {"curricula": [], "next_page_token": None}  # nothing was created


def test_the_refusal_names_the_host_in_the_error_format(
        tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    def drive(app: FastAPI) -> Any:
        with TestClient(app, base_url=f"http://{REBOUND}") as client:
            return client.get("/v1/curricula")

    answer = serve(env, url(tmp_path), drive)
    assert answer.status_code == 421 and answer.headers["x-request-id"]
    assert answer.json() == {"error": {
        "code": "HOST_NOT_ALLOWED",
        "message": f"this service does not answer to the host '{REBOUND}' "
                   "(PACELINE_ALLOWED_HOSTS)",
        "details": {"host": REBOUND}}}


def test_serve_on_loopback_answers_to_its_loopback_names_on_any_port(
        tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    found = serve(env, url(tmp_path), lambda app: {
        host: answers(app, host, ["/v1/curricula", "/ui/api/overview"])
        for host in LOOPBACK_VARIANTS})
    assert found == {host: {"/v1/curricula": (200, ""), "/ui/api/overview": (200, "")}
                     for host in LOOPBACK_VARIANTS}


def test_serve_on_loopback_refuses_other_names(tmp_path: Path,
                                               env: pytest.MonkeyPatch) -> None:
    hosts = ["localhost.evil.example", "127.0.0.1.nip.io", "evil.localhost", "evil.example",
             "localhost:http", "::1", "[::1", "[::2]:8000", "127.0.0.2:8000"]
    found = serve(env, url(tmp_path), lambda app: {
        host: answers(app, "x", ["/v1/curricula"], {"host": host}) for host in hosts})
    assert found == {host: {"/v1/curricula": (421, "HOST_NOT_ALLOWED")} for host in hosts}


def test_serve_on_another_loopback_address_answers_to_it_too(
        tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    found = serve(env, url(tmp_path), lambda app: [
        answers(app, host, ["/v1/curricula"])["/v1/curricula"][0]
        for host in ("127.0.0.2:8000", "localhost:8000", REBOUND)], "--host", "127.0.0.2")
    assert found == [200, 200, 421]


def test_several_workers_get_the_same_hosts(tmp_path: Path,
                                            env: pytest.MonkeyPatch) -> None:
    """Workers build the app from the environment: `serve` passes the hosts it chose."""
    found = serve(env, url(tmp_path), lambda app: [
        answers(app, host, ["/v1/curricula"])["/v1/curricula"][0]
        for host in ("localhost:8000", REBOUND)], "--workers", "2")
    assert found == [200, 421]


@pytest.mark.parametrize(("argv", "variables"), [
    (["--host", "0.0.0.0"], {}),  # the image, Compose, Helm: probed by the pod IP
    (["--host", "::"], {}),
    (["--host", "10.1.2.3"], {}),
    ([], {"PACELINE_API_TOKENS": '{"tok": "write"}'}),  # a rebinding page has no token
])
def test_other_addresses_or_tokens_answer_to_any_host(
        tmp_path: Path, env: pytest.MonkeyPatch, argv: list[str],
        variables: dict[str, str]) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    token = {"Authorization": "Bearer tok"}
    found = serve(env, url(tmp_path), lambda app: {
        host: answers(app, host, ["/healthz", "/readyz", "/v1/curricula"], token)
        for host in ("10.1.2.3:8000", "paceline.training.svc:8000", REBOUND)}, *argv)
    assert found == dict.fromkeys(("10.1.2.3:8000", "paceline.training.svc:8000", REBOUND),
                                  dict.fromkeys(("/healthz", "/readyz", "/v1/curricula"),
                                                (200, "")))


@pytest.mark.parametrize("argv", [[], ["--host", "0.0.0.0"]])
def test_the_setting_wins_over_the_address(tmp_path: Path, env: pytest.MonkeyPatch,
                                           argv: list[str]) -> None:
    env.setenv("PACELINE_ALLOWED_HOSTS", "Paceline.Example.org, *.internal.example")
    hosts = ["paceline.example.org:8000", "a.internal.example", "b.a.internal.example:1",
             "internal.example", "localhost:8000", "10.1.2.3:8000", REBOUND]
    found = serve(env, url(tmp_path), lambda app: [
        answers(app, host, ["/v1/curricula"])["/v1/curricula"][0] for host in hosts], *argv)
    assert found == [200, 200, 200, 421, 421, 421, 421]


def test_a_star_in_the_setting_answers_to_any_host(tmp_path: Path,
                                                   env: pytest.MonkeyPatch) -> None:
    env.setenv("PACELINE_ALLOWED_HOSTS", "*")
    found = serve(env, url(tmp_path), lambda app: answers(app, REBOUND, ["/v1/curricula"]))
    assert found == {"/v1/curricula": (200, "")}


def test_the_app_factory_alone_knows_no_address_and_answers_to_any_host(
        tmp_path: Path) -> None:
    """No address, no guess: what runs `create_app` itself (the tests, another ASGI
    server) sets the hosts, or answers to every name (TestClient says "testserver")."""
    app = create_app(Settings(database_url=url(tmp_path), auto_migrate=True))
    assert answers(app, "testserver", ["/v1/curricula"]) == {"/v1/curricula": (200, "")}
    app = create_app(Settings(database_url=url(tmp_path), allowed_hosts=["localhost"]))
    assert answers(app, "testserver", ["/v1/curricula"]) == {
        "/v1/curricula": (421, "HOST_NOT_ALLOWED")}


def test_a_request_without_a_host_header_is_refused() -> None:
    """HTTP/1.1 requires one; a browser always sends it. Refused rather than guessed."""
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("passed through")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/v1/curricula", "headers": []}
    asyncio.run(AllowedHosts(inner, ["localhost"])(scope, receive, send))
    assert sent[0]["status"] == 421
    body = json.loads(sent[1]["body"])["error"]
    assert body["code"] == "HOST_NOT_ALLOWED" and body["details"] == {"host": None}


@pytest.mark.parametrize(("header", "host"), [
    (b"localhost", "localhost"), (b"LOCALHOST:8000", "localhost"), (b"a.b.:1", "a.b"),
    (b"[::1]", "[::1]"), (b"[0::1]:80", "[::1]"), (b"127.0.0.1:", "127.0.0.1"),
    (b"::1", None), (b"a:b:c", None), (b"a:-1", None), (b"a b", None), (b"", None),
    (b"\xe9vil.example", None), (b"a/b", None), (b"a@b", None)])
def test_host_headers_are_read_as_names(header: bytes, host: str | None) -> None:
    assert requested_host(header) == host


@pytest.mark.parametrize(("value", "patterns"), [
    ("localhost,127.0.0.1", ["localhost", "127.0.0.1"]),
    ('["paceline.example.org", "*.internal.example"]',
     ["paceline.example.org", "*.internal.example"]),
    (" Paceline.Example.org. , *.Internal.example ,", ["paceline.example.org",
                                                     "*.internal.example"]),
    ("[::1],::1,[0:0::1]", ["[::1]"]),
    ("*", ["*"]),
    ("paceline_paceline_1", ["paceline_paceline_1"]),  # Compose container names
])
def test_the_setting_takes_a_list_or_commas(env: pytest.MonkeyPatch, value: str,
                                            patterns: list[str]) -> None:
    env.setenv("PACELINE_ALLOWED_HOSTS", value)
    assert Settings().allowed_hosts == patterns


@pytest.mark.parametrize(("value", "says"), [
    ("http://paceline.example.org", "'http://paceline.example.org' is not a host name"),
    ("paceline.example.org:8000", "'paceline.example.org:8000' is not a host name"),
    ("localhost,paceline.example.org/ui", "'paceline.example.org/ui' is not"),
    ("*example.org", "'*example.org' is not"),
    ("*.*.example.org", "'*.*.example.org' is not"),
    ("*.[::1]", "'*.[::1]' is not"),
    ("pace line", "'pace line' is not"),
    ("pacelíne.example.org", "is not a host name"),  # its xn-- form is what is sent
    ("", "name at least one host, or '*' for any"),
    (" , ", "name at least one host"),
    ("[]", "name at least one host"),
    ('{"a": 1}', "is not a host name"),
])
def test_bad_hosts_stop_serve_at_start(tmp_path: Path, env: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], value: str,
                                       says: str) -> None:
    env.setenv("PACELINE_ALLOWED_HOSTS", value)
    status, err = fail(capsys, "--database-url", url(tmp_path), "serve")
    assert status == 1 and err.startswith("error: invalid setting allowed_hosts: "), err
    assert says in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was opened
