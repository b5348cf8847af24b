"""A call on a closed client, or in flight when the client is closed, raises one error
on every transport: `TransportError` with code CLIENT_CLOSED. httpx raised a bare
RuntimeError, sync gRPC a `GRPC_CANCELLED` error outside the documented table, and async
gRPC an `asyncio.CancelledError` in a task no one had cancelled."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import paceline
from paceline_server.app.operations import Operations
from paceline_server.grpc.server import create_server
from paceline_server.settings import Settings
from support import FreezingProxy, threaded_service

pytestmark = pytest.mark.slow


@contextmanager
def both_apis(tmp_path: Path) -> Iterator[dict[str, str]]:
    """REST and gRPC in this process, stopped when the block ends."""
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


@pytest.fixture
def urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """REST and gRPC in this process, whose curriculum listing takes a second."""
    slow = Operations.list_curricula

    def list_slowly(self: Operations, *args: object) -> object:
        time.sleep(1.0)
        return slow(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Operations, "list_curricula", list_slowly)
    with both_apis(tmp_path) as found:
        yield found


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sync(urls: dict[str, str], transport: str) -> None:
    client = paceline.Client(urls[transport], retries=0)
    caller, failed = in_thread(client.list_curricula)
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


#: Retries that would keep a call busy for minutes against a server that is down.
PATIENT = paceline.RetryPolicy(max_attempts=30, backoff_initial=10.0, backoff_max=10.0)


def heartbeat_threads(part: str) -> list[threading.Thread]:
    """The live heartbeat threads of runs whose id has `part`."""
    return [t for t in threading.enumerate()
            if t.name.startswith("paceline-heartbeat-") and part in t.name]


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """`call` started in a thread, and the list that will hold what it raised (whatever
    reached the caller)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, failed


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_close_does_not_wait_out_retries(tmp_path: Path, transport: str) -> None:
    """The service went away and a trainer's call is waiting between retries: closing
    the client ends it at once (it went on waiting, and retrying, for minutes)."""
    with both_apis(tmp_path) as urls:
        client = paceline.Client(urls[transport], retries=PATIENT)
        cur = client.create_curriculum("c", {"a": 10}, objectives=["acc"], batch_size=2)
        runs = [cur.start_run(f"{transport}-down-{i}", heartbeat_interval=0.05)
                for i in range(3)]
    caller, failed = in_thread(cur.refresh)
    time.sleep(0.5)  # the call is waiting to try again
    assert len(heartbeat_threads(f"-{transport}-down-")) == 3 and caller.is_alive()
    started = time.monotonic()
    client.close()
    caller.join(5)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert not caller.is_alive() and isinstance(failed[0], paceline.TransportError)
    assert failed[0].code == "CLIENT_CLOSED"
    assert heartbeat_threads(f"-{transport}-down-") == []
    assert not any(run.heartbeating for run in runs)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_aclose_ends_a_call_waiting_to_retry(tmp_path: Path, transport: str) -> None:
    async def body(url: str) -> tuple[BaseException | None, float]:
        client = paceline.AsyncClient(url, retries=PATIENT)
        task = asyncio.create_task(client.list_curricula())
        await asyncio.sleep(0.5)  # failed once, waiting to try again
        started = time.monotonic()
        await client.aclose()
        try:
            await task
        except BaseException as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    with both_apis(tmp_path) as urls:
        url = urls[transport]
    error, elapsed = asyncio.run(body(url))
    assert isinstance(error, paceline.TransportError) and error.code == "CLIENT_CLOSED", error
    assert elapsed < 1.0, elapsed


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_close_does_not_wait_out_hung_heartbeats(tmp_path: Path, transport: str) -> None:
    """Three runs' heartbeats are each blocked on a call the server will never answer:
    closing the client takes at most about a second in all (it waited 5 s per run) and
    ends those calls on both transports: over gRPC by closing the channel, over HTTP by
    shutting down the sockets the threads are blocked reading (they stayed until their
    read timeout)."""
    with both_apis(tmp_path) as urls:
        port = int(urls[transport].rsplit(":", 1)[1])
        proxy = FreezingProxy(port)
        scheme = "http" if transport == "http" else "grpc"
        client = paceline.Client(f"{scheme}://127.0.0.1:{proxy.port}", retries=0)
        try:
            cur = client.create_curriculum("c", {"a": 10}, objectives=["acc"], batch_size=2)
            runs = [cur.start_run(f"{transport}-hung-{i}", heartbeat_interval=0.2)
                    for i in range(3)]
            proxy.frozen.set()
            time.sleep(0.6)  # every heartbeat has sent a beat that will never be answered
            assert len(heartbeat_threads(f"-{transport}-hung-")) == 3
            started = time.monotonic()
            client.close()
            elapsed = time.monotonic() - started
        finally:
            client.close()
            proxy.close()
    assert elapsed < 1.6, elapsed
    assert not any(run.heartbeating for run in runs)
    assert heartbeat_threads(f"-{transport}-hung-") == []


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_close_wakes_a_call_blocked_on_a_silent_server(tmp_path: Path, transport: str
                                                        ) -> None:
    """A trainer's call is blocked waiting for an answer that will never come (the server
    hung, or the network drops everything) and another thread closes the client: the call
    raises CLIENT_CLOSED at once, not at its 30 s read timeout, and a new client still
    gets through (the proxy forwards again)."""
    with both_apis(tmp_path) as urls:
        port = int(urls[transport].rsplit(":", 1)[1])
        proxy = FreezingProxy(port)
        scheme = "http" if transport == "http" else "grpc"
        address = f"{scheme}://127.0.0.1:{proxy.port}"
        try:
            client = paceline.Client(address, retries=0, timeout=30.0)
            client.list_curricula()  # a kept connection: the call below reuses it
            proxy.frozen.set()
            caller, failed = in_thread(client.list_curricula)
            time.sleep(0.5)  # sent, blocked reading
            assert caller.is_alive()
            started = time.monotonic()
            client.close()
            caller.join(5)
            elapsed = time.monotonic() - started
            assert not caller.is_alive() and elapsed < 1.0, elapsed
            assert isinstance(failed[0], paceline.TransportError), failed
            assert failed[0].code == "CLIENT_CLOSED"
            proxy.frozen.clear()
            with paceline.Client(address, retries=0) as again:
                assert again.list_curricula() == []
        finally:
            proxy.close()
