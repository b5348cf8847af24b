"""Helpers for the reliability tests: the load generator, fault-injecting proxies that run
on their own event loop thread, and the exactly-once checks on the stored event log."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from paceline_server.api.routes import state_out
from paceline_server.app.codec import decode_report
from paceline_server.app.service import PacelineService
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    """`benchmarks/load.py` as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("paceline_load", ROOT / "benchmarks" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Background:
    """A coroutine run to completion on its own thread (its own event loop), so the test's
    thread can kill services meanwhile."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = asyncio.run(make())
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the load did not finish within {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def wait_for_seq(url: str, curriculum: str, at_least: int, timeout: float = 60.0) -> int:
    """Poll the curriculum's head until it reaches `at_least` reports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(httpx.TransportError):
            response = httpx.get(f"{url}/v1/curricula/{curriculum}", timeout=5)
            if response.status_code == 200 and response.json()["seq"] >= at_least:
                return int(response.json()["seq"])
        time.sleep(0.02)
    raise AssertionError(f"{curriculum} did not reach seq {at_least} within {timeout} s")


def check_exactly_once(database_url: str, curriculum: str, acks: list[Any],
                       live_url: str | None = None) -> None:
    """Every acknowledged report is in the log exactly once at its acknowledged seq, the
    log is gap-free (1..head), nothing unacknowledged is in it, and the state (fresh
    rebuild from snapshot + tail, and the live service's /state) equals a sequential
    replay of the log."""
    store = open_store(database_url)
    try:
        events = list(store.events(curriculum))
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(events) + 1)), "the event log has gaps"
        assert store.head(curriculum).head_seq == len(events)
        keys = [e.idempotency_key for e in events]
        assert len(set(keys)) == len(keys), "a report was applied twice"
        stored = dict(zip(keys, seqs, strict=True))
        for ack in acks:
            assert stored.get(ack.key) == ack.seq, f"acked {ack.key}@{ack.seq} not in the log"
        assert set(stored) == {a.key for a in acks}, "the log holds unacknowledged reports"

        spec = CurriculumSpec.from_dict(store.get_curriculum(curriculum).spec)
        sequential = CurriculumEngine(spec)
        for event in events:
            sequential.apply(decode_report(event.payload))
        rebuilt = PacelineService(store, Settings(database_url=database_url)).engine(curriculum)
        assert rebuilt.engine.to_bytes() == sequential.to_bytes()
        if live_url is not None:
            live = httpx.get(f"{live_url}/v1/curricula/{curriculum}/state", timeout=10).json()
            expected = state_out(curriculum, sequential.inspect()).model_dump(mode="json")
            assert live == expected
    finally:
        store.close()


# ------------------------------------------------------------------ proxies
class _LoopThread:
    """An asyncio loop on a daemon thread; `call` runs a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with suppress(Exception):
        writer.close()


class TcpProxy:
    """A byte-for-byte TCP proxy to `upstream` that can be unplugged: `down()` stops
    listening (new connections are refused) and cuts every open connection, as a
    database server that went away; `up()` listens again on the same port."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._loop = _LoopThread()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.up()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def up(self) -> None:
        self._loop.call(self._start())

    def down(self) -> None:
        self._loop.call(self._stop())

    def close(self) -> None:
        self.down()
        self._loop.close()


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 message (head and Content-Length body) or None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise AssertionError("the fault proxy handles Content-Length bodies only")
    return head + await reader.readexactly(length)


class LostResponseProxy:
    """An HTTP proxy that loses answers after the service has acted on the request.

    Each request goes upstream on its own connection and the whole response is read
    (so the service has committed and answered), then for every `every`-th request
    matching `path_contains` the response is thrown away and the client's connection
    closed, as when a connection breaks after the commit. The client sees a dropped
    connection and must retry without the report being applied twice."""

    def __init__(self, upstream_port: int, path_contains: str, every: int = 3) -> None:
        self.upstream_port = upstream_port
        self.needle = path_contains.encode()
        self.every = every
        self.matched = 0
        self.dropped = 0
        self._loop = _LoopThread()
        self.port = int(self._loop.call(self._start()))

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_message(reader)) is not None:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                     self.upstream_port)
                up_writer.write(request)
                await up_writer.drain()
                response = await _read_message(up_reader)
                up_writer.close()
                request_line = request.split(b"\r\n", 1)[0]
                if self.needle in request_line:
                    self.matched += 1
                    if self.matched % self.every == 0:
                        self.dropped += 1
                        writer.transport.abort()
                        return
                if response is None:
                    writer.transport.abort()
                    return
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
        finally:
            with suppress(Exception):
                writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()

        self._loop.call(stop())
        self._loop.close()


@contextmanager
def tcp_proxy(upstream_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()
