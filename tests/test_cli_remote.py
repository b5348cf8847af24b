"""The CLI against a running service (`--url`, `--token`), on SQLite and PostgreSQL: the
same output as on the database, import through the API, scopes, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_support import fail, populated, run
from paceline.errors import PacelineError
from paceline_server import remote
from support import SPEC, free_port, fresh_pg_schema, running_service

TOKENS = {"reader": "read", "writer": "write"}


@dataclass
class Served:
    database_url: str
    url: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A service process with auth on, over a database holding `math` (12 reports)."""
    def serve(database_url: str) -> Iterator[Served]:
        populated(database_url)
        with running_service(database_url,
                             env={"PACELINE_API_TOKENS": json.dumps(TOKENS)}) as service:
            yield Served(database_url, service.url)

    if request.param == "sqlite":
        yield from serve(f"sqlite:///{tmp_path_factory.mktemp('remote') / 'paceline.db'}")
    else:
        with fresh_pg_schema() as url:
            yield from serve(url)


def test_inspect_export_and_replay_match_the_local_commands(served: Served) -> None:
    local = ["--database-url", served.database_url]
    far = ["--url", served.url, "--token", "reader"]
    for command in (["inspect", "math"], ["export", "math"],
                    ["replay", "math", "--sampler", "dump_ucb", "--weighting",
                     '{"kind": "fixed", "weights": [1, 1]}', "--every", "5"]):
        assert run(*command, *far) == run(*local, *command), command


def test_url_and_token_from_the_environment(served: Served,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACELINE_URL", served.url + "/v1")
    monkeypatch.setenv("PACELINE_TOKEN", "reader")
    assert run("inspect", "math").startswith("curriculum math  seq 12")
    # An explicit database wins over PACELINE_URL.
    assert run("--database-url", served.database_url, "inspect", "math").startswith(
        "curriculum math  seq 12")


def test_import_through_the_api(served: Served, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "math.jsonl"
    path.write_text(run("export", "math", "--url", served.url, "--token", "reader"))
    name = f"copy-{tmp_path.name[-12:].replace('_', '-')}"
    writer = ["--url", served.url, "--token", "writer"]
    monkeypatch.setattr(remote, "COMPRESS_OVER", 1000)  # sent gzip-compressed
    assert run("import", str(path), "--name", name, *writer) == (
        f"created curriculum {name} (seq 12): 12 new reports, 0 already present; 1 new "
        "runs, 0 already present\n")
    status, err = fail(capsys, "import", str(path), "--name", name, *writer)
    assert status == 2 and err.startswith("error CURRICULUM_EXISTS: ")
    assert run("import", str(path), "--name", name, "--merge", *writer) == (
        f"merged into curriculum {name} (seq 12): 0 new reports, 12 already present; 0 "
        "new runs, 1 already present\n")
    copied = run("export", name, "--url", served.url, "--token", "reader").splitlines()
    assert copied[2:] == path.read_text().splitlines()[2:]
    # Scopes: import writes, the rest reads.
    status, err = fail(capsys, "import", str(path), "--name", "x", "--url", served.url,
                       "--token", "reader")
    assert (status, err) == (2, "error FORBIDDEN: this token is read-only")
    status, err = fail(capsys, "inspect", "math", "--url", served.url)
    assert status == 2 and err.startswith("error UNAUTHENTICATED: ")


def test_remote_errors_are_one_line(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    far = ["--url", served.url, "--token", "reader"]
    for command in (["inspect", "nope"], ["export", "nope"], ["replay", "nope"]):
        status, err = fail(capsys, *command, *far)
        assert (status, err) == (2, "error CURRICULUM_NOT_FOUND: curriculum 'nope' not "
                                    "found"), command
    status, err = fail(capsys, "inspect", "math", "--url", "grpc://127.0.0.1:50051")
    assert status == 1 and "the CLI speaks REST" in err


def test_an_unreachable_service_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    status, err = fail(capsys, "inspect", "math", "--url", url)
    assert status == 1 and err.startswith(f"error: cannot reach {url}: ConnectError")


def test_a_503_is_retried_on_a_streamed_call() -> None:
    """Calls are sent streamed (an export is never held whole); the retry policy reads a
    503's error code from its body, which was not read yet: every 503 ended the command
    with httpx's ResponseNotRead instead of being retried."""
    import httpx

    def unread(status: int, body: dict[str, Any] | str, **headers: str) -> httpx.Response:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return httpx.Response(status, headers={"Content-Type": "application/json",
                                               **headers}, stream=httpx.ByteStream(data))

    error = {"error": {"code": "UNAVAILABLE", "message": "busy"}}
    answers = iter([unread(503, error, **{"Retry-After": "0"}),
                    unread(200, '{"format": 1}\n')])
    service = remote.RemoteService("http://paceline.test")
    service.http = httpx.Client(base_url="http://paceline.test",
                                transport=httpx.MockTransport(lambda request: next(answers)))
    with service:
        assert list(remote.lines(service.export("c"))) == [b'{"format": 1}']
    gone = remote.RemoteService("http://paceline.test", retries=1)
    gone.http = httpx.Client(base_url="http://paceline.test", transport=httpx.MockTransport(
        lambda request: unread(503, error, **{"Retry-After": "0"})))
    with gone, pytest.raises(PacelineError) as refused:
        gone.export("c")
    assert refused.value.code == "UNAVAILABLE"


def test_a_url_that_is_not_paceline_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """An HTML page (a 404 of another app, a 200 of the dashboard) was printed whole as
    the error, or ended in a JSONDecodeError."""
    import httpx

    from paceline_server.cli import _describe

    page = "<!DOCTYPE html>\n<html><body>not here</body></html>"
    for status in (404, 200):
        service = remote.RemoteService("http://elsewhere.test", retries=0)
        service.http = httpx.Client(base_url="http://elsewhere.test", transport=httpx.MockTransport(
            lambda request, s=status: httpx.Response(
                s, headers={"Content-Type": "text/html"}, stream=httpx.ByteStream(page.encode()))))
        with service, pytest.raises(Exception) as caught:  # noqa: PT011 - two kinds, checked below
            service.curriculum("math")
        code, line = _describe(caught.value, type("Args", (), {"url": "http://elsewhere.test"}))
        assert "not a Paceline answer: is --url the Paceline service's address?" in line
        assert "DOCTYPE" not in line and "\n" not in line
        assert (code, line.startswith("error HTTP_404: ")) == ((2, True) if status == 404
                                                               else (1, False))


def test_replay_reads_lines_as_an_import_does(served: Served) -> None:
    """Run metadata holds U+2028, U+2029 and U+0085 raw (JSON allows them in strings):
    the remote replay split the export at them (httpx's `iter_lines` splits as
    `str.splitlines`) and stopped with MALFORMED_BODY where the local one printed."""
    name = f"seps-{served.database_url[:5]}"
    service = populated(served.database_url, reports=3, spec={**SPEC, "name": name})
    service.attach_run(name, run_id="run-2", metadata={"note": "a\u2028b\u2029c\x85d é"})
    local = ["--database-url", served.database_url]
    far = ["--url", served.url, "--token", "reader"]
    assert "\u2028" in run("export", name, *far)  # written raw
    for command in (["replay", name, "--every", "1"], ["export", name]):
        assert run(*command, *far) == run(*local, *command), command


def test_lines_are_joined_across_chunks() -> None:
    import httpx

    text = '{"a": "x\u2028y"}\n\n{"b": 1}\n{"c": "\u2029"}'.encode()
    for size in (1, 2, 3, 7, len(text)):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        response = httpx.Response(200, content=iter(chunks))
        assert list(remote.lines(response)) == text.split(b"\n"), size


@pytest.mark.parametrize(("name", "expected"), [
    ("", "error INVALID_REQUEST: name must be 1 to 128 characters; got 0"),
    ("x" * 129, "error INVALID_REQUEST: name must be 1 to 128 characters; got 129"),
    ("a\x00b", "error INVALID_REQUEST: name must be valid UTF-8 without control "
                "characters; got 'a\\x00b'"),
    (".", "error CURRICULUM_NOT_FOUND: curriculum '.' not found"),
    ("..", "error CURRICULUM_NOT_FOUND: curriculum '..' not found"),
])
def test_a_name_is_refused_or_missing_alike_both_ways(
        served: Served, capsys: pytest.CaptureFixture[str], name: str, expected: str) -> None:
    """Over --url, '' asked for /v1/curricula/ (a redirect, printed as not Paceline),
    '.' and '..' were normalised out of the URL ('.' listed the curricula and failed as
    "invalid setting name"; '..' a route's NOT_FOUND), and a name the API refuses was
    looked up on a database as CURRICULUM_NOT_FOUND (on PostgreSQL a NUL was a driver
    error, exit 1)."""
    for command in ("inspect", "export", "replay"):
        assert fail(capsys, command, name, "--url", served.url, "--token", "reader") == (
            2, expected), command
        assert fail(capsys, "--database-url", served.database_url, command, name) == (
            2, expected), command
