"""The operation layer: typed commands in, typed views out, every argument validated
here and nowhere else.

Transports are codecs over it: REST decodes JSON, msgpack and query strings, gRPC decodes
protobuf, and both hand the values they found to an operation, unchecked. So a value is
refused by the same rule with the same stable code whichever transport carried it (a
curriculum name with a NUL, a step beyond 2**53 - 1, a read-only confirm), and a new
transport, or a client calling in-process, gets every rule without writing one.

The use cases themselves are `PacelineService`'s (app/service.py); this layer adds the
checks of what callers send and the views transports encode (a batch with the names its
columns are in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from paceline_server.app import page_tokens
from paceline_server.app.history import HISTORY_WAIT_S
from paceline_server.app.refill import MAX_PARTS
from paceline_server.app.service import (
    CreateResult,
    NextBatch,
    PacelineService,
    ReportAck,
    RunStatus,
)
from paceline_server.app.strategies import StrategyCatalog, strategy_catalog
from paceline_server.app.transfer import (
    ImportResult,
    export_curriculum,
    import_curriculum,
    read_lines,
)
from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import InvalidRequest
from paceline_server.domain.history import CurriculumHistory
from paceline_server.domain.inspection import CurriculumInspection
from paceline_server.domain.validation import (
    MAX_INT,
    check_identifier,
    check_int,
)
from paceline_server.store.base import CurriculumRecord

#: Most curricula (or runs) one page of a listing returns.
MAX_LIST = 1000
_Item = TypeVar("_Item")


# ------------------------------------------------------------------ commands
# Commands and views are slotted dataclasses, not frozen ones: building a frozen one costs
# microseconds (a guarded setattr per field), paid on every report.
@dataclass(slots=True)
class CreateCurriculum:
    """A spec document; `exist_ok` may also be given inside it (REST's body holds it)."""

    spec: Mapping[str, Any]
    exist_ok: bool = False


@dataclass(slots=True)
class ListCurricula:
    """A page of the curricula by name: `limit` of them from `offset`, or after
    `page_token`, the `next_page_token` of the page before (None or "": the first page).
    A token names where the page before ended, so paging by tokens lists every curriculum
    that exists throughout exactly once while others are created or deleted; an offset
    (kept for callers that page by it) shifts with them. The two cannot be combined."""

    limit: int = 100
    offset: int = 0
    page_token: str | None = None


@dataclass(slots=True)
class DeleteCurriculum:
    """`confirm` repeats the name: a delete cannot happen by a wrong path alone."""

    name: str
    confirm: str


@dataclass(slots=True)
class ListRuns:
    """A page of a curriculum's runs, oldest first: paged as `ListCurricula` is, since a
    curriculum may have any number of runs (a token continues one curriculum's runs)."""

    curriculum: str
    limit: int = 100
    offset: int = 0
    page_token: str | None = None


@dataclass(slots=True)
class AttachRun:
    curriculum: str
    run_id: str | None = None  # None: the service picks one
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SubmitReport:
    """A report body as decoded (JSON, msgpack or protobuf arrays), parsed against the
    curriculum's spec by the service; with `next_step` the ack carries that batch."""

    curriculum: str
    body: Mapping[str, Any]
    idempotency_key: str | None = None
    next_step: int | None = None
    next_size: int | None = None


@dataclass(slots=True)
class RequestBatch:
    """The batch of (run, step); with `part` >= 1 a refill of the step."""

    curriculum: str
    run_id: str
    step: int
    size: int | None = None
    part: int = 0


@dataclass(slots=True)
class GetHistory:
    curriculum: str
    every: int | None = None
    since: int | None = None


# ------------------------------------------------------------------ views
@dataclass(slots=True)
class Page(Generic[_Item]):
    """One page of a listing and the token of the next (None: this is the last page)."""

    items: list[_Item]
    next_page_token: str | None


@dataclass(slots=True)
class BatchView:
    """A batch with the names of its columns (reward weights by objective,
    probabilities by distribution), which every encoding needs."""

    batch: Batch
    objectives: tuple[str, ...]
    distributions: tuple[str, ...]
    part: int = 0


@dataclass(slots=True)
class AckView:
    ack: ReportAck
    batch: BatchView | None  # the batch the report asked for


# ------------------------------------------------------------------ checks
def check_name(value: object, field: str = "name") -> str:
    """A curriculum name looked up: any text a database can hold (the spec's own rule
    applies when one is created), so a lookup never fails in the driver."""
    return check_identifier(value, field, InvalidRequest)


def check_count(value: object, field: str, minimum: int, maximum: int = MAX_INT) -> int:
    """An integer argument in [minimum, maximum]; by default at most 2**53 - 1, which
    every JSON reader reads exactly."""
    return check_int(value, field, InvalidRequest, minimum=minimum, maximum=maximum)


def _optional(value: object, field: str, minimum: int) -> int | None:
    return None if value is None else check_count(value, field, minimum)


def _paging(limit: object, offset: object, page_token: object) -> tuple[int, int, str | None]:
    """A listing's limit, offset and page token (None: none), checked. A token with an
    offset is refused rather than one of them ignored: the caller meant one of two
    positions, and no answer could say which it got."""
    limit = check_count(limit, "limit", 1, MAX_LIST)
    offset = check_count(offset, "offset", 0)
    if page_token is None or page_token == "":
        return limit, offset, None
    if not isinstance(page_token, str):
        raise InvalidRequest("page_token must be a string", {"field": "page_token"})
    if offset:
        raise InvalidRequest("page_token and offset cannot be combined: a page token "
                             "already says where its page starts", {"field": "offset"})
    return limit, offset, page_token


def _page(found: list[_Item], limit: int, token: Callable[[_Item], str]) -> Page[_Item]:
    """`found`, read one past `limit`, as a page: the extra entry only says whether a
    next page exists, so the last page carries no token (never one to an empty page)."""
    if len(found) <= limit:
        return Page(found, None)
    return Page(found[:limit], token(found[limit - 1]))


class Operations:
    """What a transport may ask of the service, one method per operation."""

    def __init__(self, service: PacelineService) -> None:
        self.service = service

    # ------------------------------------------------------------ curricula
    def create_curriculum(self, command: CreateCurriculum) -> CreateResult:
        spec = dict(command.spec)
        inside = spec.pop("exist_ok", False)
        if not isinstance(inside, bool):  # "yes" or 1 is refused, not read
            raise InvalidRequest("exist_ok must be a boolean", {"field": "exist_ok"})
        return self.service.create_curriculum(spec, exist_ok=command.exist_ok or inside)

    def list_curricula(self, command: ListCurricula) -> Page[CurriculumRecord]:
        limit, offset, token = _paging(command.limit, command.offset, command.page_token)
        after = None if token is None else page_tokens.curricula_after(token)
        return _page(self.service.list_curricula(limit + 1, offset, after), limit,
                     page_tokens.curricula_token)

    def get_curriculum(self, name: str) -> CurriculumRecord:
        return self.service.get_curriculum(check_name(name))

    def delete_curriculum(self, command: DeleteCurriculum) -> None:
        name = check_name(command.name)
        if command.confirm != name:
            raise InvalidRequest("deleting a curriculum needs confirm=<its name>",
                                 {"field": "confirm"})
        self.service.delete_curriculum(name)

    def export(self, name: str) -> Iterator[bytes]:
        """The curriculum as JSON lines (app/transfer.py), read lazily."""
        return export_curriculum(self.service, check_name(name))

    def import_export(self, lines: Iterable[bytes | str], name: str | None = None,
                      merge: bool = False) -> ImportResult:
        """An export's JSON lines, imported in one transaction (app/transfer.py checks
        every line as it reads it)."""
        return import_curriculum(self.service, read_lines(lines), name=name, merge=merge)

    # ------------------------------------------------------------ runs
    def attach_run(self, command: AttachRun) -> RunStatus:
        """A new run (its id and metadata are checked by the service, which stores them)."""
        record = self.service.attach_run(check_name(command.curriculum, "curriculum"),
                                         command.metadata, command.run_id)
        return RunStatus(record, stale=False)

    def list_runs(self, command: ListRuns) -> Page[RunStatus]:
        name = check_name(command.curriculum, "curriculum")
        limit, offset, token = _paging(command.limit, command.offset, command.page_token)
        after, created_at = (None, None) if token is None else page_tokens.runs_after(
            token, name)
        if created_at is None:  # the first page (or a token older than the field)
            created_at = self.service.store.head(name).created_at
        # The store refuses a curriculum of the name created at another time (CONFLICT):
        # the pages are of one creation of it, never continued into a successor's runs.
        found = self.service.list_runs(name, limit + 1, offset, after, created_at=created_at)
        return _page(found, limit,
                     lambda last: page_tokens.runs_token(name, created_at, last.record))

    def get_run(self, curriculum: str, run_id: str) -> RunStatus:
        return self.service.get_run(check_name(curriculum, "curriculum"),
                                    check_identifier(run_id, "run_id", InvalidRequest))

    def heartbeat(self, curriculum: str, run_id: str) -> RunStatus:
        return self.service.heartbeat(check_name(curriculum, "curriculum"),
                                      check_identifier(run_id, "run_id", InvalidRequest))

    # ------------------------------------------------------------ reports and batches
    def _report_args(self, command: SubmitReport) -> tuple[str, str | None, NextBatch | None]:
        """The curriculum name and the next-batch request, checked; the idempotency key is
        checked by the service, which every report goes through (as a run's id is)."""
        name = check_name(command.curriculum, "curriculum")
        ask = NextBatch.asked(_optional(command.next_step, "next_step", 0),
                              _optional(command.next_size, "next_size", 1))
        return name, command.idempotency_key, ask

    def report(self, command: SubmitReport) -> AckView:
        """Validate, fold and commit a report (`PacelineService.report`)."""
        name, key, ask = self._report_args(command)
        return self._acked(name, self.service.report(name, command.body, key, ask))

    async def report_async(self, command: SubmitReport) -> AckView:
        """`report` for an event loop (`PacelineService.report_async`)."""
        name, key, ask = self._report_args(command)
        return self._acked(name, await self.service.report_async(name, command.body, key,
                                                                 ask))

    def _acked(self, name: str, ack: ReportAck) -> AckView:
        return AckView(ack, None if ack.batch is None else self._view(name, ack.batch))

    def batch(self, command: RequestBatch) -> BatchView:
        """The batch of (run, step), or a refill part of it (dynamic sampling)."""
        name = check_name(command.curriculum, "curriculum")
        run_id = check_identifier(command.run_id, "run_id", InvalidRequest)
        step = check_count(command.step, "step", 0)
        size = _optional(command.size, "size", 1)
        part = check_count(command.part, "part", 0, MAX_PARTS)
        if part:
            batch = self.service.refill(name, run_id, step, part, size)
        else:
            batch = self.service.next_batch(name, run_id, step, size)
        return self._view(name, batch, part)

    def _view(self, name: str, batch: Batch, part: int = 0) -> BatchView:
        objectives, distributions = self.service.names(name)
        return BatchView(batch, objectives, distributions, part)

    # ------------------------------------------------------------ inspection
    def state(self, curriculum: str) -> CurriculumInspection:
        return self.service.state(check_name(curriculum, "curriculum"))

    def history(self, command: GetHistory) -> CurriculumHistory:
        """Per-report series (the history service checks `every` and `since`)."""
        return self.service.history(check_name(command.curriculum, "curriculum"),
                                    command.every, command.since, HISTORY_WAIT_S)

    def prefetch(self, curriculum: str) -> None:
        """Start reading a curriculum's history and loading its engine, ahead of the
        requests a dashboard page is about to make. A name no curriculum can have is not
        looked up (the page's own requests report it)."""
        try:
            name = check_name(curriculum, "curriculum")
        except InvalidRequest:
            return
        service = self.service
        service.histories.prefetch(name, then=lambda: service.state(name))

    @staticmethod
    def strategies() -> StrategyCatalog:
        return strategy_catalog()
