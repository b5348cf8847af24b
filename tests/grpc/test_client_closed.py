"""A call on a closed client, or in flight when the client is closed, raises one error
on every transport: `TransportError` with code CLIENT_CLOSED. httpx raised a bare
RuntimeError, sync gRPC a `GRPC_CANCELLED` error outside the documented table, and async
gRPC an `asyncio.CancelledError` in a task no one had cancelled."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import paceline
from paceline_server.app.operations import Operations
from paceline_server.grpc.server import create_server
from paceline_server.settings import Settings
from support import threaded_service

pytestmark = pytest.mark.slow


@pytest.fixture
def urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """REST and gRPC in this process, whose curriculum listing takes a second."""
    slow = Operations.list_curricula

    def list_slowly(self: Operations, *args: object) -> object:
        time.sleep(1.0)
        return slow(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Operations, "list_curricula", list_slowly)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with threaded_service(url) as http:
        config = Settings(database_url=url)
        from paceline_server.app.service import PacelineService
        from paceline_server.store import open_store

        service = PacelineService(open_store(url), config)
        server = create_server(service, config, port=0, host="127.0.0.1")
        server.start()
        try:
            yield {"http": http, "grpc": f"grpc://127.0.0.1:{server.port}"}
        finally:
            server.stop(0)
            service.close()
            service.store.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sync(urls: dict[str, str], transport: str) -> None:
    client = paceline.Client(urls[transport], retries=0)
    failed: list[BaseException] = []

    def call() -> None:
        try:
            client.list_curricula()
        except BaseException as exc:  # what reached the caller, whatever it is
            failed.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # in flight
    client.close()
    caller.join(10)
    assert len(failed) == 1 and isinstance(failed[0], paceline.TransportError), failed
    assert failed[0].code == "CLIENT_CLOSED"
    with pytest.raises(RuntimeError, match="closed"):  # a call made after close
        client.curriculum("math")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_async(urls: dict[str, str], transport: str) -> None:
    async def body() -> tuple[BaseException | None, bool]:
        client = paceline.AsyncClient(urls[transport], retries=0)
        task = asyncio.create_task(client.list_curricula())
        await asyncio.sleep(0.3)
        await client.aclose()
        try:
            await task
        except BaseException as exc:  # what reached the caller, whatever it is
            return exc, task.cancelled()
        return None, task.cancelled()

    error, cancelled = asyncio.run(body())
    assert not cancelled and isinstance(error, paceline.TransportError), error
    assert error.code == "CLIENT_CLOSED"
