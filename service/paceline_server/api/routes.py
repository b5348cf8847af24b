"""The /v1 routes: codecs from HTTP to the operation layer (app/operations.py) and
back. They decode what a request carries and encode what an operation returns; every
rule about the values themselves (identifiers, integer ranges, confirmations) is the
operation layer's, so gRPC refuses exactly what REST refuses. Constraints in the OpenAPI
description document those rules; FastAPI does not enforce them a second time."""

from __future__ import annotations

import re
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from paceline_server.api import schemas
from paceline_server.api.body import read_body, read_bytes
from paceline_server.api.deps import Ops, ReadScope, WriteScope, write_scope
from paceline_server.app.history import MAX_POINTS
from paceline_server.app.operations import (
    MAX_LIST,
    AckView,
    AttachRun,
    BatchView,
    CreateCurriculum,
    DeleteCurriculum,
    GetHistory,
    ListCurricula,
    ListRuns,
    Operations,
    RequestBatch,
    SubmitReport,
)
from paceline_server.app.page_tokens import MAX_TOKEN
from paceline_server.app.service import RunStatus
from paceline_server.app.strategies import StrategyInfo
from paceline_server.app.transfer import MEDIA_TYPE
from paceline_server.domain.errors import InvalidRequest, UnsupportedMediaType
from paceline_server.domain.history import CurriculumHistory
from paceline_server.domain.inspection import CurriculumInspection
from paceline_server.domain.validation import MAX_INT, MAX_KEY, MAX_RUN_ID, TEXT_PATTERN
from paceline_server.store.base import CurriculumRecord

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503)
}
router = APIRouter(prefix="/v1", responses=ERRORS)

#: Path segments are looked up in the database; the operation layer refuses what no
#: backend can hold (control characters, more than 128 characters) with 422.
_IDENTIFIER = {"pattern": TEXT_PATTERN, "maxLength": MAX_RUN_ID}
NamePath = Annotated[str, Path(json_schema_extra=_IDENTIFIER)]
RunPath = Annotated[str, Path(json_schema_extra=_IDENTIFIER)]


def _curriculum(record: CurriculumRecord) -> schemas.CurriculumOut:
    return schemas.CurriculumOut(
        name=record.name, spec=record.spec, created_at=record.created_at,
        seq=record.head_seq, num_samples=record.num_samples,
        distributions=record.distributions, objectives=record.objectives)


def _run(status: RunStatus) -> schemas.RunOut:
    run = status.record
    return schemas.RunOut(run_id=run.run_id, curriculum=run.curriculum,
                          created_at=run.created_at, last_heartbeat=run.last_heartbeat,
                          stale=status.stale, metadata=run.metadata)


@router.post("/curricula", status_code=201, response_model=schemas.CurriculumOut,
             responses={200: {"model": schemas.CurriculumOut,
                              "description": "exist_ok: an equal curriculum exists"}},
             summary="Create a curriculum (or return the equal existing one with exist_ok)")
def create_curriculum(body: schemas.CurriculumCreate, response: Response,
                      ops: Ops, _: WriteScope) -> schemas.CurriculumOut:
    result = ops.create_curriculum(CreateCurriculum(body.model_dump()))
    if not result.created:
        response.status_code = 200
    return _curriculum(result.record)


#: ?limit=, ?offset= and ?page_token= of a listing (the operation layer checks them)
Limit = Annotated[int, Query(description="entries per page",
                             json_schema_extra={"minimum": 1, "maximum": MAX_LIST})]
Offset = Annotated[int, Query(
    description="entries to skip (shifts as entries are created or deleted: prefer "
                "page_token); refused with a page_token",
    json_schema_extra={"minimum": 0, "maximum": MAX_INT})]
PageToken = Annotated[str | None, Query(
    description="the next_page_token of the page before (absent or empty: the first page)",
    json_schema_extra={"maxLength": MAX_TOKEN})]


@router.get("/curricula", response_model=schemas.CurriculumList,
            summary="A page of the curricula by name (?limit=, ?page_token= or ?offset=)")
def list_curricula(ops: Ops, _: ReadScope, limit: Limit = 100, offset: Offset = 0,
                   page_token: PageToken = None) -> schemas.CurriculumList:
    page = ops.list_curricula(ListCurricula(limit, offset, page_token))
    return schemas.CurriculumList(curricula=[_curriculum(r) for r in page.items],
                                  next_page_token=page.next_page_token)


@router.get("/curricula/{name}", response_model=schemas.CurriculumOut)
def get_curriculum(name: NamePath, ops: Ops, _: ReadScope) -> schemas.CurriculumOut:
    return _curriculum(ops.get_curriculum(name))


@router.delete("/curricula/{name}", status_code=204,
               summary="Delete a curriculum and its history; pass ?confirm=<name>")
def delete_curriculum(name: NamePath, ops: Ops, _: WriteScope, request: Request,
                      confirm: Annotated[str, Query(
                          description="the curriculum's name again")]) -> Response:
    ops.delete_curriculum(DeleteCurriculum(name, confirm))
    request.app.state.metrics.forget(name)
    return Response(status_code=204)


@router.post("/curricula/{name}/runs", status_code=201, response_model=schemas.RunOut)
def attach_run(name: NamePath, ops: Ops, _: WriteScope,
               body: schemas.RunCreate | None = None) -> schemas.RunOut:
    body = body or schemas.RunCreate()
    return _run(ops.attach_run(AttachRun(name, body.run_id, body.metadata)))


@router.get("/curricula/{name}/runs", response_model=schemas.RunList,
            summary="A page of the curriculum's runs, oldest first "
                    "(?limit=, ?page_token= or ?offset=)")
def list_runs(name: NamePath, ops: Ops, _: ReadScope, limit: Limit = 100, offset: Offset = 0,
              page_token: PageToken = None) -> schemas.RunList:
    page = ops.list_runs(ListRuns(name, limit, offset, page_token))
    return schemas.RunList(runs=[_run(s) for s in page.items],
                           next_page_token=page.next_page_token)


@router.get("/curricula/{name}/runs/{run_id}", response_model=schemas.RunOut)
def get_run(name: NamePath, run_id: RunPath, ops: Ops, _: ReadScope) -> schemas.RunOut:
    return _run(ops.get_run(name, run_id))


@router.post("/curricula/{name}/runs/{run_id}/heartbeat", response_model=schemas.RunOut)
def heartbeat(name: NamePath, run_id: RunPath, ops: Ops, _: WriteScope) -> schemas.RunOut:
    return _run(ops.heartbeat(name, run_id))


@router.get("/curricula/{name}/export", response_class=StreamingResponse,
            responses={200: {"content": {MEDIA_TYPE: {}}, "description": (
                "JSON lines: the curriculum (spec, head seq), its runs, then its reports "
                "in log order (what `POST /v1/imports` reads)")}},
            summary="Export a curriculum as JSON lines, streamed")
def export(name: NamePath, ops: Ops, _: ReadScope) -> StreamingResponse:
    return StreamingResponse(ops.export(name), media_type=MEDIA_TYPE)


#: Media types an import body may be sent as (JSON lines; plain JSON names work too).
#: (The route is /v1/imports: /v1/curricula/import would also be the curriculum named
#: "import", whose GET and DELETE would then share a path with it.)
IMPORT_TYPES = (MEDIA_TYPE, "application/jsonl", "application/json", "")


@router.post("/imports", status_code=201, response_model=schemas.ImportOut,
             responses={200: {"model": schemas.ImportOut,
                              "description": "merged into an existing curriculum"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 MEDIA_TYPE: {"schema": {"type": "array", "items": {"type": "object"},
                                         "description": "one JSON object per line"}}},
                 "description": "an export (`GET /v1/curricula/{name}/export`), "
                                "optionally gzip (Content-Encoding)"}},
             summary="Import an export in one transaction (all or nothing)")
async def import_export(
        request: Request, _: WriteScope,
        name: Annotated[str | None, Query(description="import under this name")] = None,
        merge: Annotated[bool, Query(description=(
            "add to an existing curriculum of the same spec the reports it lacks; "
            "without it an existing curriculum is refused (409)"))] = False,
) -> JSONResponse:
    ops: Operations = request.app.state.operations
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in IMPORT_TYPES:
        raise UnsupportedMediaType(f"unsupported content-type {media!r}; send {MEDIA_TYPE}")
    data = await read_bytes(request, ops.service.settings.max_body_bytes)
    result = await run_in_threadpool(ops.import_export, data.splitlines(), name, merge)
    return JSONResponse(schemas.ImportOut(**vars(result)).model_dump(),
                        status_code=201 if result.created else 200)


#: The report route's header and query parameters, documented here and read by the
#: route itself: FastAPI's per-request parameter solving was a third of the route's
#: own time on the busiest request there is (the service's cycle benchmark).
REPORT_PARAMETERS: list[dict[str, Any]] = [
    {"name": "Idempotency-Key", "in": "header", "required": False,
     "schema": {"type": "string", "maxLength": MAX_KEY},
     "description": "a retry with the same key is applied once and gets the same ack "
                    "(may instead be given as the body's `idempotency_key`)"},
    {"name": "next_step", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
     "description": "also return the batch of (run_id, next_step) with the ack: one "
                    "request per training step instead of two"},
    {"name": "next_size", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
     "description": "that batch's size (with next_step)"},
]
_DIGITS = re.compile(r"-?[0-9]{1,20}")

REPORT_OPERATION = {
    "parameters": REPORT_PARAMETERS,
    "requestBody": {
        "required": True,
        "description": (
            "Dense form: `indices` [n], `rewards` [n][g][k], optional `advantages` [n][g]. "
            "Flat form: `rollout_indices` [m], `rewards` [m][k], optional `group_ids` [m] "
            "and `advantages` [m]. Both: `run_id`, `step`, optional `grad_products` [k][k], "
            "`eval_objectives` [k] or {objective: value}, `idempotency_key`, `dropped` (sample "
            "indices whose groups the trainer generated but did not train on: folded all "
            "the same, counted apart in the ack). JSON or "
            "msgpack, optionally gzip (Content-Encoding)."),
        "content": {
            "application/json": {"schema": {"type": "object"}, "example": {
                "run_id": "run-1", "step": 0, "indices": [3, 17],
                "rewards": [[[1.0], [0.0]], [[1.0], [1.0]]],
                "idempotency_key": "run-1/0"}},
            "application/msgpack": {"schema": {"type": "object"}},
        },
    }
}


def _query_int(request: Request, name: str) -> int | None:
    """An integer query parameter as written (its range is the operation's to check)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw):
        raise InvalidRequest(f"{name} must be an integer; got {raw!r}", {"field": name})
    return int(raw)


@router.post("/curricula/{name}/reports", response_model=schemas.ReportAckOut,
             openapi_extra=REPORT_OPERATION,
             summary="Report one step's rollouts; retried keys are applied once")
async def report(name: NamePath, request: Request) -> Response:
    ops: Operations = request.app.state.operations
    write_scope(request)
    next_step, next_size = _query_int(request, "next_step"), _query_int(request, "next_size")
    body = await read_body(request, ops.service.settings.max_body_bytes)
    key = request.headers.get("idempotency-key")
    if key is None and isinstance(body, dict):
        key = body.get("idempotency_key")  # checked by the operation, as the header is
    view: AckView = await ops.report_async(SubmitReport(name, body, key, next_step,
                                                        next_size))
    ack = view.ack
    request.app.state.metrics.reported(name, ack)
    out: dict[str, Any] = {"seq": ack.seq, "replayed": ack.replayed}
    if view.batch is not None:  # only when asked for: the plain ack keeps its shape
        out["batch"] = _batch_out(view.batch)
    if ack.dynamic:  # the report named its dropped groups: count generated vs trained
        out.update(rollouts_generated=ack.rollouts_generated,
                   rollouts_trained=ack.rollouts_trained, groups_dropped=ack.groups_dropped)
    return _json(out)


@router.post("/curricula/{name}/batches", response_model=schemas.BatchOut,
             summary="The batch of (run, step), or with part >= 1 a refill of that step "
                     "(dynamic sampling); the same request returns the same batch")
def next_batch(name: NamePath, body: schemas.BatchRequest, request: Request, ops: Ops,
               _: WriteScope) -> Response:
    view = ops.batch(RequestBatch(name, body.run_id, body.step, body.size, body.part))
    request.app.state.metrics.served(name, view.part)
    return _json(_batch_out(view))


def _batch_out(view: BatchView) -> dict[str, Any]:
    """A batch in the `BatchOut` shape, built directly rather than through the response
    model: validating and serialising a thousand indices one by one costs more than
    proposing them (orjson writes the numpy arrays as they are). `BatchOut` stays the
    OpenAPI contract; tests check responses against it."""
    batch, objectives, distributions = view.batch, view.objectives, view.distributions
    return {
        "run_id": batch.run_id, "step": batch.step,
        "indices": np.ascontiguousarray(batch.indices, dtype=np.int64),
        "reward_weights": dict(zip(objectives, batch.reward_weights.tolist(), strict=True)),
        "reward_scale": float(batch.reward_scale),
        "loss_weights": None if batch.loss_weights is None
        else np.ascontiguousarray(batch.loss_weights, dtype=np.float64),
        "probabilities": dict(zip(distributions, batch.probabilities.tolist(), strict=True)),
        "skipped_zero_variance": int(batch.skipped_zero_variance),
        "rollouts_saved": int(batch.rollouts_saved), "seq": int(batch.clock),
        "part": view.part}


def _json(out: dict[str, Any]) -> Response:
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


def state_out(name: str, view: CurriculumInspection) -> schemas.StateOut:
    objectives = list(view.objectives)
    return schemas.StateOut(
        name=name, seq=view.clock, objectives=objectives,
        reward_weights=dict(zip(objectives, view.reward_weights, strict=True)),
        reward_scale=view.reward_scale,
        distributions=[schemas.DistributionOut(
            name=d.name, size=d.size, probability=d.probability, success=d.success,
            mean_abs_advantage=d.mean_abs_advantage, learning_progress=d.learning_progress,
            zero_variance_fraction=d.zero_variance_fraction, reports=d.reports,
            sampled=d.sampled, rollouts=d.rollouts,
            health=schemas.HealthOut(stalled=d.health.stalled,
                                     saturated=d.health.saturated,
                                     hopeless=d.health.hopeless))
            for d in view.distributions],
        weight_history=[schemas.WeightRecordOut(
            seq=r.clock, weights=dict(zip(objectives, r.weights, strict=True)),
            scale=r.scale) for r in view.weight_history],
        hypervolume_history=[schemas.HypervolumeRecordOut(
            seq=r.clock, hypervolume=r.hypervolume, point=list(r.point))
            for r in view.hypervolume_history],
        sampler=view.sampler, weighting=view.weighting,
        explanations=[schemas.ExplanationOut(
            name=e.name, probability=e.probability, terms=e.terms, sentence=e.sentence,
            flags=list(e.flags)) for e in view.explanations])


@router.get("/curricula/{name}/state", response_model=schemas.StateOut)
def get_state(name: NamePath, ops: Ops, _: ReadScope) -> schemas.StateOut:
    return state_out(name, ops.state(name))


@router.get("/curricula/{name}/history", response_model=schemas.HistoryOut,
            summary="Per-report series: probabilities, success, |A|, zero-variance share, "
                    "health flags, reward weights, scale and hypervolume")
def get_history(name: NamePath, ops: Ops, _: ReadScope,
                every: Annotated[int | None, Query(
                    description="keep rows at multiples of `every` (and the last); "
                    f"default: at most {MAX_POINTS} rows",
                    json_schema_extra={"minimum": 1, "maximum": MAX_INT})] = None,
                since: Annotated[int | None, Query(
                    description="first sequence number wanted (0 = from the start; at "
                    "most the curriculum's last report)",
                    json_schema_extra={"minimum": 0, "maximum": MAX_INT})] = None,
                ) -> Response:
    return _json(history_out(ops.history(GetHistory(name, every, since))))


def history_out(view: CurriculumHistory) -> dict[str, Any]:
    """A history in the `HistoryOut` shape (column per series, NaN as null), built
    directly: orjson writes the numpy columns as they are."""
    return {
        "name": view.name, "head_seq": view.head_seq, "first_seq": view.first_seq,
        "every": view.every, "complete": view.complete, "replayed_seq": view.replayed_seq,
        "objectives": list(view.objectives),
        "distributions": list(view.distributions), "seq": view.seq, "step": view.step,
        "time": view.time,
        "per_distribution": {
            name: {key: np.ascontiguousarray(values[:, d])
                   for key, values in view.series.items()}
            for d, name in enumerate(view.distributions)},
        "reward_weights": {objective: np.ascontiguousarray(view.reward_weights[:, i])
                           for i, objective in enumerate(view.objectives)},
        "reward_scale": view.reward_scale, "hypervolume": view.hypervolume}


def _strategy(info: StrategyInfo) -> schemas.StrategyOut:
    return schemas.StrategyOut(
        name=info.name, origin=info.origin, default=info.is_default,
        description=info.description, error=info.error,
        params=[schemas.StrategyParamOut(
            name=p.name, type=p.type, default=p.default, required=p.required,
            choices=None if p.choices is None else list(p.choices)) for p in info.params])


@router.get("/strategies", response_model=schemas.StrategiesOut,
            summary="Every registered sampler and weighting, its parameters and defaults")
def list_strategies(_: ReadScope) -> schemas.StrategiesOut:
    catalog = Operations.strategies()
    return schemas.StrategiesOut(
        samplers=[_strategy(i) for i in catalog.samplers],
        weightings=[_strategy(i) for i in catalog.weightings],
        default_sampler=catalog.default_sampler,
        default_weighting=catalog.default_weighting)
