"""The synchronous client: `Client` -> `Curriculum` -> `Run`.

A trainer creates (or gets) a curriculum, attaches a run, and then per step asks for a
batch and reports what happened. Every call is an operation (`_operations`) handed to the
client's transport: HTTP or gRPC with retries, or the service's application layer in this
process (`Client.embedded`). Reports carry an idempotency key generated once per call, so
a retry after a lost answer is recognised by the service and never applied twice.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, SupportsIndex, TypeVar

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
from paceline._transport import Reply, RetryPolicy, SyncTransport
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
    from paceline._embedded import EmbeddedTransport
    from paceline._grpc_transport import GrpcSyncTransport

__all__ = ["DEFAULT_URL", "Client", "Curriculum", "Run", "new_run_id", "report_key"]

logger = logging.getLogger("paceline")

DEFAULT_URL = "http://127.0.0.1:8000"
PAGE = 100
_Item = TypeVar("_Item")


class Pages(Generic[_Item]):
    """Reads a listing page by page, each page asked for with the `next_page_token` of
    the one before, until a page comes without one. A token names where its page ended,
    so the service starts the next page after that entry: every item that exists
    throughout is listed exactly once, whatever is created or deleted meanwhile.

    A service older than page tokens answers without the field at all (a null or empty
    one means the last page) and ignores `page_token`: a full page of it is read on by
    offset, as clients of that release did, each page from the last item seen, which it
    must hold. If the listing shifted back (an item before it was deleted) the page is
    read again from further back, and only items after the last one seen are taken, so
    an item that exists throughout is still listed once. Stopping there (the old
    service's first 100 items, silently) or raising (no listing at all until the server
    is upgraded, as clients are usually upgraded first) would be worse."""

    def __init__(self, request: Callable[[int, int, str | None], op.Operation], field: str,
                 parse: Callable[[Any], _Item], key: Callable[[_Item], Any]) -> None:
        self._request, self.field, self._parse, self._key = request, field, parse, key
        self.found: list[_Item] = []
        self.token: str | None = None
        self.offset: int | None = None  # set once the service shows it has no tokens

    def request(self) -> op.Operation:
        """The operation that reads the next page (PAGE items after `token`, or from
        `offset` on a service without tokens)."""
        if self.offset is None:
            return self._request(PAGE, 0, self.token)
        return self._request(PAGE, self.offset, None)

    def read(self, call: Callable[[op.Operation], Mapping[str, Any]]) -> list[_Item]:
        """Every item, each page read through `call` (a client's `_call`)."""
        while not self.take(call(self.request())):
            pass
        return self.found

    async def aread(self, call: Callable[[op.Operation], Awaitable[Mapping[str, Any]]]
                    ) -> list[_Item]:
        """`read` for an async client's `_call`."""
        while not self.take(await call(self.request())):
            pass
        return self.found

    def take(self, answer: Mapping[str, Any]) -> bool:
        """Take one page's answer; True once the listing is complete."""
        page = [self._parse(item) for item in answer[self.field]]
        if self.offset is not None:
            return self._take_by_offset(page, self.offset)
        self.found.extend(page)
        if "next_page_token" in answer:
            self.token = answer["next_page_token"] or None
            return self.token is None
        if len(page) < PAGE:  # a service without tokens, and its last page
            return True
        self.offset = len(page) - 1  # the next page starts with this page's last item
        return False

    def _take_by_offset(self, page: list[_Item], offset: int) -> bool:
        last = self._key(self.found[-1])  # offset paging starts after a full page
        if offset > 0 and (not page or self._key(page[0]) > last):
            self.offset = max(offset - (PAGE - 1), 0)  # shifted back: look earlier
            return False
        self.found.extend(item for item in page if self._key(item) > last)
        if len(page) < PAGE:
            return True
        self.offset = offset + len(page) - 1
        return False


def curriculum_pages() -> Pages[CurriculumInfo]:
    """Every curriculum, by name (`GET /v1/curricula`, gRPC `ListCurricula`)."""
    return Pages(lambda limit, offset, token: op.ListCurricula(limit, offset, token),
                 "curricula", CurriculumInfo.model_validate, operator.attrgetter("name"))


def run_pages(curriculum: str) -> Pages[RunInfo]:
    """Every run of `curriculum`, oldest first: the service's order, by creation time
    and then id (`GET /v1/curricula/{name}/runs`, gRPC `ListRuns`)."""
    return Pages(lambda limit, offset, token: op.ListRuns(curriculum, limit, offset, token),
                 "runs", RunInfo.model_validate, operator.attrgetter("created_at", "run_id"))


#: Seconds closing waits for heartbeat threads to finish (once the transport is closed
#: they end at once, unless a beat is blocked in a socket read: a daemon thread that
#: can no longer reach the service).
HEARTBEAT_JOIN_S = 1.0


def base_url(url: str | None) -> str:
    """The service root from an explicit URL, `PACELINE_URL`, or the local default;
    a trailing `/v1` is accepted and dropped."""
    root = (url or os.environ.get("PACELINE_URL") or DEFAULT_URL).rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def is_grpc(url: str) -> bool:
    """grpc://host:port (or grpcs:// for TLS) selects the gRPC transport."""
    return url.startswith(("grpc://", "grpcs://"))


def default_headers(token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    from paceline import __version__

    headers = {"User-Agent": f"paceline-client/{__version__}", "Accept": "application/json"}
    token = token if token is not None else os.environ.get("PACELINE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return {**headers, **(extra or {})}


def new_run_id() -> str:
    """Run ids are chosen here, not by the service, so a retried attach names the same run
    instead of creating a second one."""
    return uuid.uuid4().hex


def report_key(run_id: str, step: int) -> str:
    """A fresh idempotency key for one `report` call (reused by that call's retries)."""
    return f"{run_id}/{step}/{uuid.uuid4().hex}"


class Client:
    """A connection to a Paceline service.

    `retries` is the number of retries after the first attempt (or a `RetryPolicy`);
    `timeout` is httpx's (seconds, or an `httpx.Timeout`). Reports are sent as JSON (or
    msgpack with `report_encoding="msgpack"`), gzip-compressed above `compress_over`
    bytes. `transport` plugs in any `httpx.BaseTransport` (a proxy, a test double).
    A `grpc://host:port` URL speaks gRPC instead (`pip install 'paceline-client[grpc]'`):
    same objects, errors, retries and idempotency; reports go as packed arrays.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float | httpx.Timeout = 30.0,
                 retries: int | RetryPolicy | None = 4,
                 headers: Mapping[str, str] | None = None,
                 report_encoding: ReportEncoding = "json",
                 compress_over: int | None = COMPRESS_OVER,
                 transport: httpx.BaseTransport | None = None) -> None:
        root = base_url(url)
        if is_grpc(root):
            from paceline._grpc_transport import GrpcSyncTransport

            if transport is not None:
                raise ValueError("transport= plugs into HTTP; a grpc:// URL uses gRPC")
            self._setup(GrpcSyncTransport(root, RetryPolicy.of(retries), timeout=timeout,
                                          headers=default_headers(token, headers)),
                        report_encoding, compress_over)
            return
        http = httpx.Client(base_url=root, timeout=timeout, transport=transport,
                            headers=default_headers(token, headers))
        self._setup(SyncTransport(http, RetryPolicy.of(retries)), report_encoding,
                    compress_over)

    def _setup(self, transport: SyncTransport | GrpcSyncTransport | EmbeddedTransport,
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
        self._runs: weakref.WeakSet[Run] = weakref.WeakSet()
        self._closed = False

    @property
    def report_encoding(self) -> ReportEncoding:
        """How HTTP reports are encoded ("json" or "msgpack"; gRPC sends protobuf and the
        embedded mode encodes nothing)."""
        return self._transport.report_encoding

    @report_encoding.setter
    def report_encoding(self, value: ReportEncoding) -> None:
        self._transport.report_encoding = value

    @property
    def compress_over(self) -> int | None:
        """HTTP report bodies larger than this many bytes are gzipped (None: never)."""
        return self._transport.compress_over

    @compress_over.setter
    def compress_over(self, value: int | None) -> None:
        self._transport.compress_over = value

    @classmethod
    def embedded(cls, path: str | os.PathLike[str] | None = None, *,
                 retries: int | RetryPolicy | None = 4,
                 report_encoding: ReportEncoding = "json",
                 **settings: Any) -> Client:
        """Run the service in this process on a SQLite file (a temporary one, deleted at
        `close`, when `path` is None) — for notebooks and tests. Needs the server package.
        `settings` override `paceline_server.settings.Settings` fields (a keyword that
        names none raises TypeError).

        Calls go straight to the service's application layer, in the calling thread: no
        HTTP, no encoding, no retries (`retries` is accepted and unused), the same
        answers, errors, idempotency and durability as the service over HTTP."""
        from paceline._embedded import EmbeddedService, EmbeddedTransport

        del retries  # nothing to retry in-process
        self = cls.__new__(cls)
        service = EmbeddedService.open(path, settings)
        # Also close it (and remove a temporary database) when a notebook never closes
        # the client.
        finalizer = weakref.finalize(self, service.close)
        self._setup(EmbeddedTransport(service, on_close=finalizer), report_encoding,
                    COMPRESS_OVER)
        return self

    # ---------------------------------------------------------------- plumbing
    def _send(self, operation: op.Operation) -> Reply:
        if self._closed:
            raise RuntimeError("this paceline.Client is closed")
        return self._transport.send(operation)

    def _call(self, operation: op.Operation) -> Any:
        return self._send(operation).json()

    def close(self) -> None:
        """Stop the heartbeats of this client's runs and release connections (and, when
        embedded, the in-process service)."""
        if self._closed:
            return
        self._closed = True
        # Every heartbeat is told to stop first, then the transport closes, which ends
        # the calls in flight and the waits between retries (a heartbeat's too) at
        # once, so close never waits out a heartbeat stuck retrying a server that is
        # down: at most HEARTBEAT_JOIN_S in all, however many runs there are.
        stopping = [beat for run in list(self._runs) if (beat := run._stop_heartbeat())]
        self._transport.close()
        deadline = time.monotonic() + HEARTBEAT_JOIN_S
        for beat in stopping:
            beat.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---------------------------------------------------------------- curricula
    def create_curriculum(
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
    ) -> Curriculum:
        """Create a curriculum. `distributions` is a list of {"name", "size"} (or
        (name, size) pairs, or a {name: size} mapping): samples 0..size-1 of the first
        distribution come first, and so on. For an interleaved dataset give `labels`
        (the distribution position of every sample) and `names`. With `exist_ok` an
        equal spec returns the stored curriculum; a different one raises `Conflict`.
        Without `sampler` (or `weighting`) the service uses its recommended default
        (`strategies()` says which; the returned `spec` shows it)."""
        spec = curriculum_spec(
            name, distributions=distributions, labels=labels, names=names,
            objectives=objectives, sampler=sampler, weighting=weighting,
            batch_size=batch_size, seed=seed, zero_variance=zero_variance,
            primary_objective=primary_objective)
        reply = self._send(op.CreateCurriculum(spec, exist_ok))
        if _api.created_elsewhere(reply):
            return self.curriculum(name)
        return Curriculum(self, CurriculumInfo.model_validate(reply.json()))

    def curriculum(self, name: str) -> Curriculum:
        """An existing curriculum; raises `NotFound`."""
        return Curriculum(self, CurriculumInfo.model_validate(
            self._call(op.GetCurriculum(name))))

    def list_curricula(self) -> list[CurriculumInfo]:
        """Every curriculum, by name."""
        return curriculum_pages().read(self._call)

    def strategies(self) -> StrategyCatalog:
        """Every sampler and weighting the service can run (plug-ins included), with
        their parameters and defaults, and what a curriculum that names none gets."""
        return StrategyCatalog.model_validate(self._call(op.ListStrategies()))


class Curriculum:
    """A handle on one stored curriculum."""

    def __init__(self, client: Client, info: CurriculumInfo) -> None:
        self.client = client
        self.info = info
        self._served: _api.Served | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def objectives(self) -> list[str]:
        """Objective names in order: the order of the last axis of reported rewards."""
        return list(self.info.objectives)

    @property
    def distributions(self) -> list[str]:
        return list(self.info.distributions)

    @property
    def spec(self) -> dict[str, Any]:
        """The canonical spec as stored (defaults filled in)."""
        return dict(self.info.spec)

    def __repr__(self) -> str:
        return f"Curriculum({self.name!r}, seq={self.info.seq})"

    def refresh(self) -> CurriculumInfo:
        """Fetch the curriculum again (its `seq` moves with every report)."""
        self.info = CurriculumInfo.model_validate(
            self.client._call(op.GetCurriculum(self.name)))
        return self.info

    def start_run(self, run_id: str | None = None, metadata: Mapping[str, Any] | None = None,
                  heartbeat_interval: float | None = 30.0) -> Run:
        """Attach a run (a new one, or `run_id` to resume) and heartbeat it in a background
        thread every `heartbeat_interval` seconds (None or 0: no heartbeat) until the
        run is closed. Use it as a context manager."""
        run_id = run_id if run_id is not None else new_run_id()
        info = RunInfo.model_validate(
            self.client._call(op.AttachRun(self.name, run_id, run_metadata(metadata))))
        run = Run(self, info, heartbeat_interval)
        self.client._runs.add(run)
        if self.client._closed:  # closed while attaching: its close stopped no beat here
            run._stop_heartbeat()
        return run

    def runs(self) -> list[RunInfo]:
        """The runs attached to this curriculum, oldest first, with their last
        heartbeat (every page of the listing)."""
        return run_pages(self.name).read(self.client._call)

    def state(self) -> State:
        """Per-distribution statistics, reward weights and their history, health."""
        return State.model_validate(self.client._call(op.GetState(self.name)))

    def history(self, every: SupportsIndex | None = None, since: SupportsIndex | None = None,
                wait: bool = True) -> History:
        """Per-report series: probabilities, success, mean |advantage|, zero-variance share
        and health flags per distribution; reward weights, scale and hypervolume.

        `every`: keep rows at multiples of it (and the last; the service's default keeps
        at most 1000 rows); `since`: from that sequence number. The first call on a long
        curriculum makes the service replay its log; with `wait` (the default) this asks
        again until the history is complete, without it you get what is replayed so far
        (`complete` False). `pandas.DataFrame(cur.history().records())` gives a table."""
        while True:
            history = History.model_validate(
                self.client._call(op.GetHistory(self.name, index_or_none(every),
                                                index_or_none(since))))
            if history.complete or not wait:
                return history
            time.sleep(POLL_S)

    def delete(self) -> None:
        """Delete the curriculum and all its history (irreversible)."""
        reply = self.client._send(op.DeleteCurriculum(self.name))
        if not _api.deleted(reply):
            raise reply.error()


class _Heartbeat:
    """A daemon thread calling `beat` every `interval` seconds until stopped. Failures are
    logged, not raised: a missed heartbeat only marks the run stale for a while."""

    def __init__(self, beat: Callable[[], object], interval: float, name: str) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception as exc:  # a background thread must not die
                if not failing and not self._stop.is_set():
                    logger.warning("paceline: heartbeat failed: %s", exc)
                failing = True
            else:
                failing = False

    def signal(self) -> None:
        """Ask the thread to stop after its current beat (without waiting for it)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def stop(self, timeout: float = HEARTBEAT_JOIN_S) -> None:
        self.signal()
        self.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class Run:
    """One trainer's attachment to a curriculum: batches and reports are keyed by
    (run, step). Closing it (or leaving its `with` block) stops the heartbeat."""

    def __init__(self, curriculum: Curriculum, info: RunInfo,
                 heartbeat_interval: float | None = 30.0) -> None:
        self.curriculum = curriculum
        self.info = info
        self._heartbeat: _Heartbeat | None = None
        if heartbeat_interval:
            if heartbeat_interval < 0:
                raise ValueError("heartbeat_interval must be positive")
            self._heartbeat = _Heartbeat(self.heartbeat, heartbeat_interval,
                                         f"paceline-heartbeat-{info.run_id}")

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def client(self) -> Client:
        return self.curriculum.client

    @property
    def heartbeating(self) -> bool:
        return self._heartbeat is not None and self._heartbeat.alive

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, curriculum={self.curriculum.name!r})"

    def next_batch(self, step: SupportsIndex, size: SupportsIndex | None = None) -> Batch:
        """The batch for `step` (the curriculum's batch size unless `size`). Asking again
        for the same step returns the same batch."""
        served = self.client._call(op.NextBatch(
            self.curriculum.name, self.run_id, operator.index(step), index_or_none(size)))
        return _api.served(self.curriculum).batch(served)

    def refill(self, step: SupportsIndex, part: SupportsIndex,
               size: SupportsIndex | None = None) -> Batch:
        """Dynamic sampling: refill part `part` (1, 2, ...) of `step`, i.e. `size` more
        prompts (default: the curriculum's batch size) that no earlier part of the step
        served, chosen by the curriculum's sampler. Ask for part 1 after `next_batch(step)`,
        part 2 after part 1, and so on, before reporting the step; then report every
        group you generated, naming those you did not train on in `dropped`. The same
        (step, part) again returns the same prompts (without `size`: whatever size it
        was served with). Refused with `Conflict`
        (REFILL_OUT_OF_ORDER, STEP_ALREADY_REPORTED) or `InvalidInput`
        (REFILL_TOO_LARGE: fewer prompts left unserved in the step)."""
        served = self.client._call(op.NextBatch(
            self.curriculum.name, self.run_id, operator.index(step), index_or_none(size),
            operator.index(part)))
        return _api.served(self.curriculum).batch(served)

    def report(self, step: SupportsIndex, indices: Any, rewards: Any, advantages: Any = None,
               group_ids: Any = None, grad_products: Any = None,
               eval_objectives: Any = None, *, idempotency_key: str | None = None,
               dropped: Any = None,
               next_step: SupportsIndex | None = None, next_size: SupportsIndex | None = None,
               unserved: Literal["refuse", "accept"] | None = None
               ) -> ReportAck:
        """Report one step's rollouts.

        Dense form: `indices` [n] (the batch's sample indices), `rewards` [n, g, k] with
        k in objective order, [n, g] for a single objective, or {objective: [n, g]};
        `advantages` [n, g]. Ragged groups: pass `group_ids` [m] and give one row per
        rollout — `indices` [m] (each rollout's sample index), `rewards` [m, k] (or
        {objective: [m]}), `advantages` [m]. Optional `grad_products` [k, k] and
        `eval_objectives` ([k] or {objective: value}).

        The idempotency key is generated once per call (pass your own, e.g. derived from
        the step, to make a re-report after a crash a no-op too).

        With `next_step` the ack's `batch` is the batch for that step (of size
        `next_size`, default the curriculum's): one round trip per training step instead
        of `report` + `next_batch`, and the same batch `next_batch(next_step)` returns.

        Dynamic sampling (see `refill`): report every group generated in the step, and
        name in `dropped` the sample indices of those you did not train on (e.g. all
        rewards equal). They are folded all the same; the ack then counts
        `rollouts_generated`, `rollouts_trained` and `groups_dropped`.

        A step is folded once: reporting it again returns the first acknowledgement
        when the content is the same (whatever the key) and raises `Conflict`
        (REPORT_CONFLICT) when it differs. A step Paceline never served, or indices it did
        not serve, raise `Conflict` (NOT_SERVED / INDICES_NOT_SERVED) unless
        `unserved="accept"` (for a trainer that samples its own prompts)."""
        step = operator.index(step)
        report = op.Report(
            self.curriculum.name, idempotency_key or report_key(self.run_id, step),
            run_id=self.run_id, step=step, indices=indices, rewards=rewards,
            objectives=tuple(self.curriculum.info.objectives), advantages=advantages,
            group_ids=group_ids, grad_products=grad_products,
            eval_objectives=eval_objectives, dropped=dropped, unserved=unserved,
            next_step=index_or_none(next_step), next_size=index_or_none(next_size))
        return _api.served(self.curriculum).report_ack(self.client._call(report))

    def heartbeat(self) -> RunInfo:
        """Tell the service this run is alive (done in the background by `start_run`)."""
        self.info = RunInfo.model_validate(
            self.client._call(op.Heartbeat(self.curriculum.name, self.run_id)))
        return self.info

    def refresh(self) -> RunInfo:
        self.info = RunInfo.model_validate(
            self.client._call(op.GetRun(self.curriculum.name, self.run_id)))
        return self.info

    def close(self) -> None:
        """Stop the background heartbeat (the run stays attached and can be resumed)."""
        beat = self._stop_heartbeat()
        if beat is not None:
            beat.join(HEARTBEAT_JOIN_S)

    def _stop_heartbeat(self) -> _Heartbeat | None:
        """Tell the heartbeat to stop; the thread, for the caller to join."""
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.signal()
        return beat

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
