"""The `paceline.v1.Paceline` handlers: authenticate, decode, call an operation
(app/operations.py, which checks every value as it does for REST), encode, map errors.

Each RPC of the service descriptor is bound to one method of `PacelineHandlers` with the
scope it needs (reads need `read` or `write`, everything else `write`, as in REST). A
`PacelineError` becomes the gRPC status of the shared error table, with the stable code,
message, details and REST status in the trailing metadata `paceline-error-bin`. Every
call is counted and timed in the request metrics with `transport="grpc"`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message

from paceline_server.app.operations import (
    AttachRun,
    CreateCurriculum,
    DeleteCurriculum,
    GetHistory,
    ListCurricula,
    ListRuns,
    Operations,
    RequestBatch,
    SubmitReport,
)
from paceline_server.app.service import PacelineService
from paceline_server.domain.errors import MalformedBody, PacelineError
from paceline_server.grpc import convert
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.transport import request_id
from paceline_server.transport.auth import Scope, require, scope_of
from paceline_server.transport.errors import InternalError, lookup, retry_after
from paceline_server.transport.metrics import Metrics
from paceline_server.transport.ratelimit import RateLimiter, peer_host

logger = logging.getLogger("paceline_server.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Paceline"].full_name
ERROR_KEY = "paceline-error-bin"
#: whole seconds the client should wait before a retry (REST's Retry-After, the same value)
RETRY_AFTER_KEY = "retry-after"

Handler = Callable[[Any, grpc.ServicerContext], Message]


def error_info(error: PacelineError) -> pb.ErrorInfo:
    return pb.ErrorInfo(code=error.code, message=error.message,
                        details_json=convert.dump_json(error.details),
                        http_status=lookup(error).http)


def abort(context: grpc.ServicerContext, error: PacelineError) -> NoReturn:
    """End the call with the table's status and the error (and the call's request id)
    in the trailing metadata."""
    status = lookup(error)
    trailer: tuple[tuple[str, str | bytes], ...] = (
        (ERROR_KEY, error_info(error).SerializeToString()), *_request_id())
    after = retry_after(error)
    if after is not None:
        trailer += ((RETRY_AFTER_KEY, after),)
    context.set_trailing_metadata(trailer)
    context.abort(grpc.StatusCode[status.grpc], error.message)


def _request_id() -> tuple[tuple[str, str], ...]:
    value = request_id.current.get()
    return () if value is None else ((request_id.HEADER, value),)


def metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None,
                   key: str) -> str | bytes | None:
    """The first value of `key` in the call's metadata, if any."""
    return next((v for k, v in metadata or () if k == key), None)


@dataclass(frozen=True)
class Method:
    """One RPC: its handler, the scope it needs and its message classes."""

    name: str
    handler: Handler
    scope: Scope
    request: type[Message]
    response: type[Message]


class PacelineHandlers:
    """The operation behind each RPC; shares `PacelineService` with the REST app."""

    READS = frozenset({"ListCurricula", "GetCurriculum", "ListRuns", "GetRun", "GetState",
                       "ListStrategies", "GetHistory"})

    def __init__(self, service: PacelineService, settings: Settings,
                 metrics: Metrics | None = None, limiter: RateLimiter | None = None) -> None:
        self.service = service
        self.ops = Operations(service)
        self.settings = settings
        self.metrics = metrics
        self.limiter = limiter

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

    def guard(self, method: Method) -> Callable[[bytes, grpc.ServicerContext], Message]:
        """The handler behind authentication, decoding, error mapping and request metrics.
        It takes the message's bytes and decodes them itself, so that a message that
        does not decode is refused as REST refuses a body (400 MALFORMED_BODY) and
        counted, where grpcio's own decoding answered a bare INTERNAL no metric saw."""
        route = f"/{SERVICE_NAME}/{method.name}"

        def call(raw: bytes, context: grpc.ServicerContext) -> Message:
            metadata = context.invocation_metadata()
            token = request_id.current.set(
                request_id.accept(metadata_value(metadata, request_id.HEADER)))
            try:
                return serve(raw, context, metadata)
            finally:
                request_id.current.reset(token)

        def serve(raw: bytes, context: grpc.ServicerContext,
                  metadata: Sequence[tuple[str, str | bytes]] | None) -> Message:
            start = time.perf_counter()
            error: PacelineError | None = None
            try:
                header = metadata_value(metadata, "authorization")
                if self.limiter is not None:  # first: a refused call costs nothing more
                    self.limiter.check(header, peer_host(context.peer()))
                require(method.scope, scope_of(
                    header, self.settings, where="metadata authorization: Bearer <token>"))
                try:
                    request = method.request.FromString(raw)
                except DecodeError:
                    raise MalformedBody(f"the request is not a {method.request.__name__} "
                                        "message") from None
                answer = method.handler(request, context)
                context.set_trailing_metadata(_request_id())
                return answer
            except PacelineError as exc:
                error = exc
                if lookup(exc).http >= 500:  # operators must see these, as over REST
                    logger.warning("paceline.v1.Paceline/%s failed: %s: %s%s", method.name,
                                   exc.code, exc.message, request_id.label())
            except Exception:
                logger.exception("paceline.v1.Paceline/%s failed%s", method.name,
                                 request_id.label())
                error = InternalError("internal error")
            finally:
                if self.metrics is not None:
                    # gRPC calls are HTTP/2 POSTs; the status is the one REST would answer.
                    self.metrics.observe(
                        "grpc", "POST", route, 200 if error is None else lookup(error).http,
                        time.perf_counter() - start, None if error is None else error.code)
            assert error is not None  # a call that did not return failed
            abort(context, error)

        return call

    def unknown_method(self, method: str) -> grpc.RpcMethodHandler[bytes, None]:
        """The answer to a method no service here has: UNIMPLEMENTED, as grpcio answers
        it, and counted as REST counts an unknown path (404 NOT_FOUND, route
        `unmatched`), so a client calling a method this server lacks shows up."""

        def call(raw: bytes, context: grpc.ServicerContext) -> None:
            if self.metrics is not None:
                self.metrics.observe("grpc", "POST", "unmatched", 404, 0.0, "NOT_FOUND")
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method}")

        return grpc.unary_unary_rpc_method_handler(call)

    # ------------------------------------------------------------ curricula
    def create_curriculum(self, request: pb.CreateCurriculumRequest,
                          context: grpc.ServicerContext) -> pb.CreateCurriculumResponse:
        result = self.ops.create_curriculum(CreateCurriculum(
            convert.load_object(request.spec_json, "spec_json"), request.exist_ok))
        return pb.CreateCurriculumResponse(curriculum=convert.curriculum(result.record),
                                           created=result.created)

    def list_curricula(self, request: pb.ListCurriculaRequest,
                       context: grpc.ServicerContext) -> pb.ListCurriculaResponse:
        page = self.ops.list_curricula(ListCurricula(
            request.limit or 100, request.offset, request.page_token))  # 0, "": unset
        return pb.ListCurriculaResponse(  # the token always set ("" on the last page): a
            curricula=[convert.curriculum(r) for r in page.items],  # client tells this
            next_page_token=page.next_page_token or "")  # server from one without tokens

    def get_curriculum(self, request: pb.GetCurriculumRequest,
                       context: grpc.ServicerContext) -> pb.Curriculum:
        return convert.curriculum(self.ops.get_curriculum(request.name))

    def delete_curriculum(self, request: pb.DeleteCurriculumRequest,
                          context: grpc.ServicerContext) -> pb.DeleteCurriculumResponse:
        self.ops.delete_curriculum(DeleteCurriculum(request.name, request.confirm))
        if self.metrics is not None:
            self.metrics.forget(request.name)
        return pb.DeleteCurriculumResponse()

    # ------------------------------------------------------------ runs
    def attach_run(self, request: pb.AttachRunRequest,
                   context: grpc.ServicerContext) -> pb.Run:
        return convert.run(self.ops.attach_run(AttachRun(
            request.curriculum, request.run_id or None,  # empty: the service picks one
            convert.load_object(request.metadata_json, "metadata_json", empty={}))))

    def list_runs(self, request: pb.ListRunsRequest,
                  context: grpc.ServicerContext) -> pb.ListRunsResponse:
        page = self.ops.list_runs(ListRuns(request.curriculum, request.limit or 100,
                                           request.offset, request.page_token))  # 0, "": unset
        return pb.ListRunsResponse(runs=[convert.run(s) for s in page.items],
                                   next_page_token=page.next_page_token or "")

    def get_run(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return convert.run(self.ops.get_run(request.curriculum, request.run_id))

    def heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
                  ) -> pb.Run:
        return convert.run(self.ops.heartbeat(request.curriculum, request.run_id))

    # ------------------------------------------------------------ reports and batches
    def report(self, request: pb.ReportRequest, context: grpc.ServicerContext
               ) -> pb.ReportAck:
        view = self.ops.report(SubmitReport(
            request.curriculum, convert.report_body(request),
            request.idempotency_key or None,  # empty: no key
            request.next_step if request.HasField("next_step") else None,
            request.next_size if request.HasField("next_size") else None))
        ack = view.ack
        answer = pb.ReportAck(seq=ack.seq, replayed=ack.replayed,
                              rollouts_generated=ack.rollouts_generated,
                              rollouts_trained=ack.rollouts_trained,
                              groups_dropped=ack.groups_dropped)
        if view.batch is not None:
            answer.batch.CopyFrom(convert.batch_view(view.batch))
        if self.metrics is not None:
            self.metrics.reported(request.curriculum, ack)
        return answer

    def next_batch(self, request: pb.NextBatchRequest, context: grpc.ServicerContext
                   ) -> pb.Batch:
        view = self.ops.batch(RequestBatch(
            request.curriculum, request.run_id, request.step,
            request.size if request.HasField("size") else None, request.part))
        if self.metrics is not None:
            self.metrics.served(request.curriculum, view.part)
        return convert.batch_view(view)

    def get_state(self, request: pb.GetStateRequest, context: grpc.ServicerContext
                  ) -> pb.State:
        return convert.state(request.curriculum, self.ops.state(request.curriculum))

    def get_history(self, request: pb.GetHistoryRequest, context: grpc.ServicerContext
                    ) -> pb.History:
        return convert.history(self.ops.history(GetHistory(
            request.curriculum, request.every if request.HasField("every") else None,
            request.since if request.HasField("since") else None)))

    def list_strategies(self, request: pb.ListStrategiesRequest,
                        context: grpc.ServicerContext) -> pb.ListStrategiesResponse:
        return convert.strategies(self.ops.strategies())
