"""A bug in one request is answered 500 INTERNAL in the API's error format, logged with
its traceback, and costs nobody else anything: not even the connection it came on."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from paceline_server.app.operations import Operations
from support import threaded_service


def _exchange(sock: socket.socket, path: str) -> bytes:
    """One GET on a kept-alive connection; the whole response (Content-Length bodies)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_bug_answers_500_and_keeps_the_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: Operations, *args: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Operations, "list_curricula", broken)
    with threaded_service(f"sqlite:///{tmp_path / 'b.db'}") as url, \
            caplog.at_level(logging.ERROR, logger="paceline_server.api"):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            failed = _exchange(sock, "/v1/curricula")
            assert failed.startswith(b"HTTP/1.1 500")
            assert b'"code":"INTERNAL"' in failed and b"a bug" not in failed
            assert _exchange(sock, "/healthz").startswith(b"HTTP/1.1 200")  # same socket
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
    assert any("GET /v1/curricula failed: INTERNAL" in r.getMessage() for r in caplog.records)
