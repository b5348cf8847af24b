"""The asyncio client: the same API as `paceline.client`, every call awaited. Runs
heartbeat in an asyncio task instead of a thread. Shares the operations, payload shaping,
answer reading and the retry policy with the sync client."""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex

import httpx

from paceline import _api
from paceline import _operations as op
from paceline._operations import index_or_none
from paceline._payloads import (
    COMPRESS_OVER,
    ReportEncoding,
    curriculum_spec,
    import_msgpack,
    run_metadata,
)
from paceline._transport import AsyncTransport, Reply, RetryPolicy
from paceline.client import (
    base_url,
    curriculum_pages,
    default_headers,
    is_grpc,
    new_run_id,
    report_key,
    run_pages,
)
from paceline.history import POLL_S, History
from paceline.models import (
    Batch,
    CurriculumInfo,
    ReportAck,
    RunInfo,
    State,
    StrategyCatalog,
)

if TYPE_CHECKING:  # gRPC and the server are optional: imported only when asked for
    from paceline._embedded import AsyncEmbeddedTransport
    from paceline._grpc_transport import GrpcAsyncTransport

__all__ = ["AsyncClient", "AsyncCurriculum", "AsyncRun"]

logger = logging.getLogger("paceline")


class AsyncClient:
    """A connection to a Paceline service for asyncio code; see `paceline.Client`."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float | httpx.Timeout = 30.0,
                 retries: int | RetryPolicy | None = 4,
                 headers: Mapping[str, str] | None = None,
                 report_encoding: ReportEncoding = "json",
                 compress_over: int | None = COMPRESS_OVER,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        root = base_url(url)
        if is_grpc(root):
            from paceline._grpc_transport import GrpcAsyncTransport

            if transport is not None:
                raise ValueError("transport= plugs into HTTP; a grpc:// URL uses gRPC")
            self._setup(GrpcAsyncTransport(root, RetryPolicy.of(retries), timeout=timeout,
                                           headers=default_headers(token, headers)),
                        report_encoding, compress_over)
            return
        http = httpx.AsyncClient(base_url=root, timeout=timeout,
                                 transport=transport, headers=default_headers(token, headers))
        self._setup(AsyncTransport(http, RetryPolicy.of(retries)), report_encoding,
                    compress_over)

    def _setup(self, transport: AsyncTransport | GrpcAsyncTransport | AsyncEmbeddedTransport,
               report_encoding: ReportEncoding,
               compress_over: int | None) -> None:
        if report_encoding == "msgpack":
            import_msgpack()
        elif report_encoding != "json":
            raise ValueError(f"report_encoding must be 'json' or 'msgpack'; "
                             f"got {report_encoding!r}")
        self._transport = transport
        self.report_encoding = report_encoding
        self.compress_over = compress_over
        self._runs: weakref.WeakSet[AsyncRun] = weakref.WeakSet()
        self._closed = False

    @property
    def report_encoding(self) -> ReportEncoding:
        """See `Client.report_encoding`."""
        return self._transport.report_encoding

    @report_encoding.setter
    def report_encoding(self, value: ReportEncoding) -> None:
        self._transport.report_encoding = value

    @property
    def compress_over(self) -> int | None:
        """See `Client.compress_over`."""
        return self._transport.compress_over

    @compress_over.setter
    def compress_over(self, value: int | None) -> None:
        self._transport.compress_over = value

    @classmethod
    def embedded(cls, path: str | os.PathLike[str] | None = None, *,
                 retries: int | RetryPolicy | None = 4,
                 report_encoding: ReportEncoding = "json",
                 **settings: Any) -> AsyncClient:
        """The service in this process on SQLite (see `Client.embedded`): reports are
        queued from the caller's event loop as the server's own loop does, other calls
        run in a worker thread so that database I/O does not hold the loop."""
        from paceline._embedded import AsyncEmbeddedTransport, EmbeddedService

        del retries  # nothing to retry in-process
        self = cls.__new__(cls)
        service = EmbeddedService.open(path, settings)
        finalizer = weakref.finalize(self, service.close)
        self._setup(AsyncEmbeddedTransport(service, on_close=finalizer), report_encoding,
                    COMPRESS_OVER)
        return self

    async def _send(self, operation: op.Operation) -> Reply:
        if self._closed:
            raise RuntimeError("this paceline.AsyncClient is closed")
        return await self._transport.send(operation)

    async def _call(self, operation: op.Operation) -> Any:
        return (await self._send(operation)).json()

    async def aclose(self) -> None:
        """Stop the heartbeats of this client's runs and release connections. Also when
        the task closing it is being cancelled (`async with` in a cancelled task): every
        heartbeat is stopped and the transport closed before the cancellation goes on
        (awaiting each run's `aclose` in turn stopped at the first run)."""
        if self._closed:
            return
        self._closed = True
        beating = [task for run in list(self._runs) if (task := run._stop()) is not None]
        try:
            await self._transport.aclose()
        finally:
            if beating:
                await asyncio.wait(beating)

    close = aclose

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def create_curriculum(
        self, name: str,
        distributions: Sequence[Mapping[str, Any] | tuple[str, int] | str]
        | Mapping[str, int] | None = None, *,
        objectives: Sequence[str | Mapping[str, Any]],
        labels: Any = None, names: Sequence[str] | None = None,
        sampler: str | Mapping[str, Any] | None = None,
        weighting: str | Mapping[str, Any] | None = None,
        batch_size: int = 64, seed: int = 0,
        zero_variance: bool | Mapping[str, Any] | None = None,
        primary_objective: str | None = None,
        exist_ok: bool = False,
    ) -> AsyncCurriculum:
        """See `Client.create_curriculum`."""
        spec = curriculum_spec(
            name, distributions=distributions, labels=labels, names=names,
            objectives=objectives, sampler=sampler, weighting=weighting,
            batch_size=batch_size, seed=seed, zero_variance=zero_variance,
            primary_objective=primary_objective)
        reply = await self._send(op.CreateCurriculum(spec, exist_ok))
        if _api.created_elsewhere(reply):
            return await self.curriculum(name)
        return AsyncCurriculum(self, CurriculumInfo.model_validate(reply.json()))

    async def curriculum(self, name: str) -> AsyncCurriculum:
        """An existing curriculum; raises `NotFound`."""
        return AsyncCurriculum(self, CurriculumInfo.model_validate(
            await self._call(op.GetCurriculum(name))))

    async def list_curricula(self) -> list[CurriculumInfo]:
        return await curriculum_pages().aread(self._call)

    async def strategies(self) -> StrategyCatalog:
        """Every sampler and weighting the service can run (plug-ins included), with
        their parameters and defaults, and what a curriculum that names none gets."""
        return StrategyCatalog.model_validate(await self._call(op.ListStrategies()))


class AsyncCurriculum:
    """A handle on one stored curriculum (asyncio)."""

    def __init__(self, client: AsyncClient, info: CurriculumInfo) -> None:
        self.client = client
        self.info = info
        self._served: _api.Served | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def objectives(self) -> list[str]:
        return list(self.info.objectives)

    @property
    def distributions(self) -> list[str]:
        return list(self.info.distributions)

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.info.spec)

    def __repr__(self) -> str:
        return f"AsyncCurriculum({self.name!r}, seq={self.info.seq})"

    async def refresh(self) -> CurriculumInfo:
        self.info = CurriculumInfo.model_validate(
            await self.client._call(op.GetCurriculum(self.name)))
        return self.info

    async def start_run(self, run_id: str | None = None,
                        metadata: Mapping[str, Any] | None = None,
                        heartbeat_interval: float | None = 30.0) -> AsyncRun:
        """Attach a run and heartbeat it from an asyncio task until it is closed."""
        run_id = run_id if run_id is not None else new_run_id()
        info = RunInfo.model_validate(
            await self.client._call(op.AttachRun(self.name, run_id, run_metadata(metadata))))
        run = AsyncRun(self, info, heartbeat_interval)
        self.client._runs.add(run)
        if self.client._closed:  # closed while attaching: its close stopped no beat here
            run._stop()
        return run

    async def runs(self) -> list[RunInfo]:
        """Every run, oldest first (as `Curriculum.runs`)."""
        return await run_pages(self.name).aread(self.client._call)

    async def state(self) -> State:
        return State.model_validate(await self.client._call(op.GetState(self.name)))

    async def history(self, every: SupportsIndex | None = None,
                      since: SupportsIndex | None = None, wait: bool = True) -> History:
        """As `Curriculum.history`: per-report series, asked again until complete unless
        `wait` is False."""
        while True:
            history = History.model_validate(
                await self.client._call(op.GetHistory(self.name, index_or_none(every),
                                                      index_or_none(since))))
            if history.complete or not wait:
                return history
            await asyncio.sleep(POLL_S)

    async def delete(self) -> None:
        reply = await self.client._send(op.DeleteCurriculum(self.name))
        if not _api.deleted(reply):
            raise reply.error()


class AsyncRun:
    """A run (asyncio); `async with` or `await run.aclose()` stops the heartbeat task."""

    def __init__(self, curriculum: AsyncCurriculum, info: RunInfo,
                 heartbeat_interval: float | None = 30.0) -> None:
        self.curriculum = curriculum
        self.info = info
        self._task: asyncio.Task[None] | None = None
        if heartbeat_interval:
            if heartbeat_interval < 0:
                raise ValueError("heartbeat_interval must be positive")
            self._task = asyncio.get_running_loop().create_task(
                self._beat(heartbeat_interval), name=f"paceline-heartbeat-{info.run_id}")

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def client(self) -> AsyncClient:
        return self.curriculum.client

    @property
    def heartbeating(self) -> bool:
        return self._task is not None and not self._task.done()

    def __repr__(self) -> str:
        return f"AsyncRun({self.run_id!r}, curriculum={self.curriculum.name!r})"

    async def _beat(self, interval: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except Exception as exc:  # the task must keep beating
                if not failing:
                    logger.warning("paceline: heartbeat failed: %s", exc)
                failing = True
            else:
                failing = False

    async def next_batch(self, step: SupportsIndex, size: SupportsIndex | None = None) -> Batch:
        """See `Run.next_batch`."""
        served = await self.client._call(op.NextBatch(
            self.curriculum.name, self.run_id, operator.index(step), index_or_none(size)))
        return _api.served(self.curriculum).batch(served)

    async def refill(self, step: SupportsIndex, part: SupportsIndex,
                     size: SupportsIndex | None = None) -> Batch:
        """See `Run.refill`."""
        served = await self.client._call(op.NextBatch(
            self.curriculum.name, self.run_id, operator.index(step), index_or_none(size),
            operator.index(part)))
        return _api.served(self.curriculum).batch(served)

    async def report(self, step: SupportsIndex, indices: Any, rewards: Any, advantages: Any = None,
                     group_ids: Any = None, grad_products: Any = None,
                     eval_objectives: Any = None, *, idempotency_key: str | None = None,
                     dropped: Any = None,
                     next_step: SupportsIndex | None = None,
                     next_size: SupportsIndex | None = None,
                     unserved: Literal["refuse", "accept"] | None = None) -> ReportAck:
        """See `Run.report`."""
        step = operator.index(step)
        report = op.Report(
            self.curriculum.name, idempotency_key or report_key(self.run_id, step),
            run_id=self.run_id, step=step, indices=indices, rewards=rewards,
            objectives=tuple(self.curriculum.info.objectives), advantages=advantages,
            group_ids=group_ids, grad_products=grad_products,
            eval_objectives=eval_objectives, dropped=dropped, unserved=unserved,
            next_step=index_or_none(next_step), next_size=index_or_none(next_size))
        return _api.served(self.curriculum).report_ack(await self.client._call(report))

    async def heartbeat(self) -> RunInfo:
        self.info = RunInfo.model_validate(
            await self.client._call(op.Heartbeat(self.curriculum.name, self.run_id)))
        return self.info

    async def refresh(self) -> RunInfo:
        self.info = RunInfo.model_validate(
            await self.client._call(op.GetRun(self.curriculum.name, self.run_id)))
        return self.info

    async def aclose(self) -> None:
        """Stop the heartbeat task (the run stays attached and can be resumed)."""
        task = self._stop()
        if task is not None:
            # `wait` does not raise the heartbeat's CancelledError; a cancellation of the
            # task closing us still interrupts it.
            await asyncio.wait([task])

    def _stop(self) -> asyncio.Task[None] | None:
        """Cancel the heartbeat task; the task, to be awaited, if it was running."""
        task, self._task = self._task, None
        if task is None or task.done():
            return None
        task.cancel()
        return task

    close = aclose

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
