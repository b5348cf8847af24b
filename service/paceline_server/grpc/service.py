"""The `paceline.v1.Paceline` handlers: authenticate, call a use case, map errors.

Each RPC of the service descriptor is bound to one method of `PacelineHandlers` with the
scope it needs (reads need `read` or `write`, everything else `write`, as in REST). A
`PacelineError` becomes the gRPC status of the shared error table, with the stable code,
message, details and REST status in the trailing metadata `paceline-error-bin`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import grpc
from google.protobuf.message import Message

from paceline_server.api.errors import grpc_status_of, retryable, status_of
from paceline_server.api.metrics import Metrics, count_rollouts
from paceline_server.app.history import HISTORY_WAIT_S
from paceline_server.app.service import NextBatch, PacelineService, RunStatus
from paceline_server.app.strategies import strategy_catalog
from paceline_server.domain.errors import (
    Forbidden,
    InvalidRequest,
    PacelineError,
    Unauthenticated,
)
from paceline_server.domain.validation import check_nesting
from paceline_server.grpc import convert
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings

logger = logging.getLogger("paceline_server.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Paceline"].full_name
ERROR_KEY = "paceline-error-bin"
RETRY_AFTER_KEY = "retry-after"
#: seconds a retryable error asks the client to wait (REST sends the same Retry-After)
RETRY_AFTER_S = "1"

Scope = Literal["read", "write"]
Handler = Callable[[Any, grpc.ServicerContext], Message]


class InternalError(PacelineError):
    """An unexpected failure in a handler, rendered like any other error."""

    code = "INTERNAL"


def error_info(error: PacelineError) -> pb.ErrorInfo:
    return pb.ErrorInfo(code=error.code, message=error.message,
                        details_json=convert.dump_json(error.details),
                        http_status=status_of(error))


def abort(context: grpc.ServicerContext, error: PacelineError) -> NoReturn:
    """End the call with the table's status and the error in the trailing metadata."""
    trailer: tuple[tuple[str, str | bytes], ...] = (
        (ERROR_KEY, error_info(error).SerializeToString()),)
    if retryable(error):
        trailer += ((RETRY_AFTER_KEY, RETRY_AFTER_S),)
    context.set_trailing_metadata(trailer)
    context.abort(grpc.StatusCode[grpc_status_of(error)], error.message)


def bearer_scope(metadata: Sequence[tuple[str, str | bytes]], settings: Settings) -> Scope:
    """The scope of the call's `authorization: Bearer <token>` (write when auth is off)."""
    if not settings.auth_enabled:
        return "write"
    header = next((v for k, v in metadata if k == "authorization"), "")
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    scheme, _, token = text.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token (metadata authorization: Bearer <token>)")
    for known, scope in settings.api_tokens.items():
        if hmac.compare_digest(known.encode(), token.strip().encode()):
            return scope
    raise Unauthenticated("unknown bearer token")


@dataclass(frozen=True)
class Method:
    """One RPC: its handler, the scope it needs and its message classes."""

    name: str
    handler: Handler
    scope: Scope
    request: type[Message]
    response: type[Message]


class PacelineHandlers:
    """The use cases behind each RPC; shares `PacelineService` with the REST app."""

    READS = frozenset({"ListCurricula", "GetCurriculum", "ListRuns", "GetRun", "GetState",
                       "ListStrategies", "GetHistory"})

    def __init__(self, service: PacelineService, settings: Settings,
                 metrics: Metrics | None = None) -> None:
        self.service = service
        self.settings = settings
        self.metrics = metrics

    def methods(self) -> list[Method]:
        """Every RPC of the service descriptor, bound to the method of the same name in
        snake case (a missing handler fails here, at start)."""
        found = []
        for method in pb.DESCRIPTOR.services_by_name["Paceline"].methods:
            attribute = "".join(f"_{c.lower()}" if c.isupper() else c
                                for c in method.name).lstrip("_")
            found.append(Method(
                method.name, getattr(self, attribute),
                "read" if method.name in self.READS else "write",
                getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)))
        return found

    def guard(self, method: Method) -> Callable[[Any, grpc.ServicerContext], Message]:
        """The handler behind authentication and error mapping."""
        def call(request: Any, context: grpc.ServicerContext) -> Message:
            try:
                scope = bearer_scope(context.invocation_metadata(), self.settings)
                if method.scope == "write" and scope != "write":
                    raise Forbidden("this token is read-only", {"scope": scope})
                convert.check_identifiers(request)
                return method.handler(request, context)
            except PacelineError as exc:
                error = exc
            except Exception:
                logger.exception("paceline.v1.Paceline/%s failed", method.name)
                error = InternalError("internal error")
            abort(context, error)

        return call

    # ------------------------------------------------------------ curricula
    def create_curriculum(self, request: pb.CreateCurriculumRequest,
                          context: grpc.ServicerContext) -> pb.CreateCurriculumResponse:
        data = convert.load_object(request.spec_json, "spec_json")
        exist_ok = data.pop("exist_ok", False)
        if not isinstance(exist_ok, bool):  # as REST: "yes" or 1 is refused, not read
            raise InvalidRequest("exist_ok must be a boolean", {"field": "exist_ok"})
        exist_ok = request.exist_ok or exist_ok
        result = self.service.create_curriculum(data, exist_ok=exist_ok)
        return pb.CreateCurriculumResponse(curriculum=convert.curriculum(result.record),
                                           created=result.created)

    def list_curricula(self, request: pb.ListCurriculaRequest,
                       context: grpc.ServicerContext) -> pb.ListCurriculaResponse:
        limit = convert.check_range(request.limit or 100, "limit", 1, 1000)
        offset = convert.check_range(request.offset, "offset", 0)
        return pb.ListCurriculaResponse(curricula=[
            convert.curriculum(r) for r in self.service.list_curricula(limit, offset)])

    def get_curriculum(self, request: pb.GetCurriculumRequest,
                       context: grpc.ServicerContext) -> pb.Curriculum:
        return convert.curriculum(self.service.get_curriculum(request.name))

    def delete_curriculum(self, request: pb.DeleteCurriculumRequest,
                          context: grpc.ServicerContext) -> pb.DeleteCurriculumResponse:
        if request.confirm != request.name:
            raise InvalidRequest("deleting a curriculum needs confirm=<its name>",
                                 {"field": "confirm"})
        self.service.delete_curriculum(request.name)
        if self.metrics is not None:
            self.metrics.forget(request.name)
        return pb.DeleteCurriculumResponse()

    # ------------------------------------------------------------ runs
    def attach_run(self, request: pb.AttachRunRequest,
                   context: grpc.ServicerContext) -> pb.Run:
        run_id = convert.check_id(request.run_id, "run_id") if request.run_id else None
        metadata = convert.load_object(request.metadata_json, "metadata_json", empty={})
        check_nesting(metadata, "metadata_json", InvalidRequest)
        record = self.service.attach_run(request.curriculum, metadata, run_id)
        return convert.run(RunStatus(record, stale=False))

    def list_runs(self, request: pb.ListRunsRequest,
                  context: grpc.ServicerContext) -> pb.ListRunsResponse:
        return pb.ListRunsResponse(
            runs=[convert.run(s) for s in self.service.list_runs(request.curriculum)])

    def get_run(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return convert.run(self.service.get_run(request.curriculum, request.run_id))

    def heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
                  ) -> pb.Run:
        return convert.run(self.service.heartbeat(request.curriculum, request.run_id))

    # ------------------------------------------------------------ reports and batches
    def report(self, request: pb.ReportRequest, context: grpc.ServicerContext
               ) -> pb.ReportAck:
        ask = NextBatch.asked(
            convert.check_range(request.next_step, "next_step", 0)
            if request.HasField("next_step") else None,
            convert.check_range(request.next_size, "next_size", 1)
            if request.HasField("next_size") else None)
        ack = self.service.report(request.curriculum, convert.report_body(request),
                                  request.idempotency_key or None, ask)
        answer = pb.ReportAck(seq=ack.seq, replayed=ack.replayed,
                              rollouts_generated=ack.rollouts_generated,
                              rollouts_trained=ack.rollouts_trained,
                              groups_dropped=ack.groups_dropped)
        if ack.batch is not None:
            objectives, distributions = self.service.names(request.curriculum)
            answer.batch.CopyFrom(convert.batch(ack.batch, objectives, distributions))
        if self.metrics is not None:
            self.metrics.reports.labels(request.curriculum).inc()
            count_rollouts(self.metrics, request.curriculum, ack.rollouts_generated,
                           ack.rollouts_trained)
            if ack.batch is not None:
                self.metrics.batches.labels(request.curriculum).inc()
        return answer

    def next_batch(self, request: pb.NextBatchRequest, context: grpc.ServicerContext
                   ) -> pb.Batch:
        run_id = convert.check_id(request.run_id, "run_id")
        step = convert.check_range(request.step, "step", 0)
        size = convert.check_range(request.size, "size", 1) \
            if request.HasField("size") else None
        if request.part:
            batch = self.service.refill(request.curriculum, run_id, step,
                                        convert.check_range(request.part, "part", 0), size)
        else:
            batch = self.service.next_batch(request.curriculum, run_id, step, size)
        objectives, distributions = self.service.names(request.curriculum)
        if self.metrics is not None:
            self.metrics.batches.labels(request.curriculum).inc()
            if request.part:
                self.metrics.refills.labels(request.curriculum).inc()
        return convert.batch(batch, objectives, distributions, request.part)

    def get_state(self, request: pb.GetStateRequest, context: grpc.ServicerContext
                  ) -> pb.State:
        return convert.state(request.curriculum, self.service.state(request.curriculum))

    def get_history(self, request: pb.GetHistoryRequest, context: grpc.ServicerContext
                    ) -> pb.History:
        every = request.every if request.HasField("every") else None
        since = request.since if request.HasField("since") else None
        return convert.history(self.service.history(request.curriculum, every, since,
                                                    HISTORY_WAIT_S))

    def list_strategies(self, request: pb.ListStrategiesRequest,
                        context: grpc.ServicerContext) -> pb.ListStrategiesResponse:
        return convert.strategies(strategy_catalog())
