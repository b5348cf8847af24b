"""The /v1 routes: thin adapters from HTTP to `PacelineService` use cases."""

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
from paceline_server.api.deps import ReadScope, Service, WriteScope, write_scope
from paceline_server.api.metrics import count_rollouts
from paceline_server.app.history import HISTORY_WAIT_S, MAX_POINTS
from paceline_server.app.service import MAX_KEY, NextBatch, PacelineService, RunStatus
from paceline_server.app.strategies import StrategyInfo, strategy_catalog
from paceline_server.app.transfer import (
    MEDIA_TYPE,
    export_curriculum,
    import_curriculum,
    read_lines,
)
from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import InvalidRequest, UnsupportedMediaType
from paceline_server.domain.history import CurriculumHistory
from paceline_server.domain.inspection import CurriculumInspection
from paceline_server.domain.validation import MAX_INT, TEXT_PATTERN, has_control_characters
from paceline_server.store.base import CurriculumRecord

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503)
}
router = APIRouter(prefix="/v1", responses=ERRORS)

#: Path segments are looked up in the database: one PostgreSQL cannot store (NUL) would
#: fail there, so control characters are refused up front (422) on every backend.
NamePath = Annotated[str, Path(pattern=TEXT_PATTERN)]
RunPath = Annotated[str, Path(pattern=TEXT_PATTERN)]


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
                      service: Service, _: WriteScope) -> schemas.CurriculumOut:
    data = body.model_dump()
    exist_ok = data.pop("exist_ok")
    result = service.create_curriculum(data, exist_ok=exist_ok)
    if not result.created:
        response.status_code = 200
    return _curriculum(result.record)


@router.get("/curricula", response_model=schemas.CurriculumList)
def list_curricula(service: Service, _: ReadScope,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                   ) -> schemas.CurriculumList:
    return schemas.CurriculumList(
        curricula=[_curriculum(r) for r in service.list_curricula(limit, offset)])


@router.get("/curricula/{name}", response_model=schemas.CurriculumOut)
def get_curriculum(name: NamePath, service: Service, _: ReadScope) -> schemas.CurriculumOut:
    return _curriculum(service.get_curriculum(name))


@router.delete("/curricula/{name}", status_code=204,
               summary="Delete a curriculum and its history; pass ?confirm=<name>")
def delete_curriculum(name: NamePath, service: Service, _: WriteScope, request: Request,
                      confirm: Annotated[str, Query(
                          description="the curriculum's name again")]) -> Response:
    if confirm != name:
        raise InvalidRequest("deleting a curriculum needs ?confirm=<its name>",
                             {"field": "confirm"})
    service.delete_curriculum(name)
    request.app.state.metrics.forget(name)
    return Response(status_code=204)


@router.post("/curricula/{name}/runs", status_code=201, response_model=schemas.RunOut)
def attach_run(name: NamePath, service: Service, _: WriteScope,
               body: schemas.RunCreate | None = None) -> schemas.RunOut:
    body = body or schemas.RunCreate()
    record = service.attach_run(name, body.metadata, body.run_id)
    return _run(RunStatus(record, stale=False))


@router.get("/curricula/{name}/runs", response_model=schemas.RunList)
def list_runs(name: NamePath, service: Service, _: ReadScope) -> schemas.RunList:
    return schemas.RunList(runs=[_run(s) for s in service.list_runs(name)])


@router.get("/curricula/{name}/runs/{run_id}", response_model=schemas.RunOut)
def get_run(name: NamePath, run_id: RunPath, service: Service, _: ReadScope) -> schemas.RunOut:
    return _run(service.get_run(name, run_id))


@router.post("/curricula/{name}/runs/{run_id}/heartbeat", response_model=schemas.RunOut)
def heartbeat(name: NamePath, run_id: RunPath, service: Service,
              _: WriteScope) -> schemas.RunOut:
    return _run(service.heartbeat(name, run_id))


@router.get("/curricula/{name}/export", response_class=StreamingResponse,
            responses={200: {"content": {MEDIA_TYPE: {}}, "description": (
                "JSON lines: the curriculum (spec, head seq), its runs, then its reports "
                "in log order (what `POST /v1/imports` reads)")}},
            summary="Export a curriculum as JSON lines, streamed")
def export(name: NamePath, service: Service, _: ReadScope) -> StreamingResponse:
    return StreamingResponse(export_curriculum(service, name), media_type=MEDIA_TYPE)


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
    service: PacelineService = request.app.state.service
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in IMPORT_TYPES:
        raise UnsupportedMediaType(f"unsupported content-type {media!r}; send {MEDIA_TYPE}")
    data = await read_bytes(request, service.settings.max_body_bytes)
    result = await run_in_threadpool(import_curriculum, service, read_lines(data.splitlines()),
                                     name=name, merge=merge)
    return JSONResponse(schemas.ImportOut(**vars(result)).model_dump(),
                        status_code=201 if result.created else 200)


#: The report route's header and query parameters, documented here and read by
#: `_report_options`: FastAPI's per-request parameter solving was a third of the route's
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


def _query_int(request: Request, name: str, low: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    value = int(raw) if _DIGITS.fullmatch(raw) else None
    if value is None or not low <= value <= MAX_INT:
        raise InvalidRequest(f"{name} must be an integer in [{low}, {MAX_INT}]; got {raw!r}",
                             {"field": name})
    return value


def _report_options(request: Request) -> tuple[str | None, NextBatch | None]:
    """The Idempotency-Key header and the asked-for next batch (REPORT_PARAMETERS)."""
    key = request.headers.get("idempotency-key")
    return key, NextBatch.asked(_query_int(request, "next_step", 0),
                                _query_int(request, "next_size", 1))


@router.post("/curricula/{name}/reports", response_model=schemas.ReportAckOut,
             openapi_extra=REPORT_OPERATION,
             summary="Report one step's rollouts; retried keys are applied once")
async def report(name: NamePath, request: Request) -> Response:
    service: PacelineService = request.app.state.service
    write_scope(request)
    idempotency_key, ask = _report_options(request)
    body = await read_body(request, service.settings.max_body_bytes)
    if isinstance(body, dict) and idempotency_key is None:
        idempotency_key = body.get("idempotency_key")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            # Ignoring it would apply a retried report twice.
            raise InvalidRequest("idempotency_key must be a string",
                                 {"field": "idempotency_key"})
    if idempotency_key is not None and has_control_characters(idempotency_key):
        raise InvalidRequest("the idempotency key must not contain control characters",
                             {"field": "idempotency_key"})
    ack = await service.report_async(name, body, idempotency_key, ask)
    metrics = request.app.state.metrics
    metrics.reports.labels(name).inc()
    count_rollouts(metrics, name, ack.rollouts_generated, ack.rollouts_trained)
    out: dict[str, Any] = {"seq": ack.seq, "replayed": ack.replayed}
    if ack.batch is not None:  # only when asked for: the plain ack keeps its shape
        metrics.batches.labels(name).inc()
        out["batch"] = _batch_out(service, name, ack.batch)
    if ack.dynamic:  # the report named its dropped groups: count generated vs trained
        out.update(rollouts_generated=ack.rollouts_generated,
                   rollouts_trained=ack.rollouts_trained, groups_dropped=ack.groups_dropped)
    return _json(out)


@router.post("/curricula/{name}/batches", response_model=schemas.BatchOut,
             summary="The batch of (run, step), or with part >= 1 a refill of that step "
                     "(dynamic sampling); the same request returns the same batch")
def next_batch(name: NamePath, body: schemas.BatchRequest, request: Request, service: Service,
               _: WriteScope) -> Response:
    metrics = request.app.state.metrics
    if body.part:
        batch = service.refill(name, body.run_id, body.step, body.part, body.size)
        metrics.refills.labels(name).inc()
    else:
        batch = service.next_batch(name, body.run_id, body.step, body.size)
    metrics.batches.labels(name).inc()
    return _json(_batch_out(service, name, batch, body.part))


def _batch_out(service: PacelineService, name: str, batch: Batch,
               part: int = 0) -> dict[str, Any]:
    """A batch in the `BatchOut` shape, built directly rather than through the response
    model: validating and serialising a thousand indices one by one costs more than
    proposing them (orjson writes the numpy arrays as they are). `BatchOut` stays the
    OpenAPI contract; tests check responses against it."""
    objectives, distributions = service.names(name)
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
        "part": part}


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
def get_state(name: NamePath, service: Service, _: ReadScope) -> schemas.StateOut:
    return state_out(name, service.state(name))


@router.get("/curricula/{name}/history", response_model=schemas.HistoryOut,
            summary="Per-report series: probabilities, success, |A|, zero-variance share, "
                    "health flags, reward weights, scale and hypervolume")
def get_history(name: NamePath, service: Service, _: ReadScope,
                every: Annotated[int | None, Query(
                    description="keep rows at multiples of `every` (and the last); "
                    f"default: at most {MAX_POINTS} rows",
                    json_schema_extra={"minimum": 1, "maximum": MAX_INT})] = None,
                since: Annotated[int | None, Query(
                    description="first sequence number wanted (0 = from the start; at "
                    "most the curriculum's last report)",
                    json_schema_extra={"minimum": 0, "maximum": MAX_INT})] = None,
                ) -> Response:
    return _json(history_out(service.history(name, every, since, HISTORY_WAIT_S)))


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
    catalog = strategy_catalog()
    return schemas.StrategiesOut(
        samplers=[_strategy(i) for i in catalog.samplers],
        weightings=[_strategy(i) for i in catalog.weightings],
        default_sampler=catalog.default_sampler,
        default_weighting=catalog.default_weighting)
