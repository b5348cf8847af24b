"""Between protobuf messages and the operation layer's commands and views.

Mirrors the REST schemas one to one (api/routes.py), so a client sees the same values
over both transports. Nothing here judges a value (the operations do, for every
transport); it only decodes: JSON text fields, and report arrays, which arrive as packed
floats with shapes and are handed to `parse_report` as numpy arrays, without a per-value
loop.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from paceline_server.app.operations import BatchView
from paceline_server.app.service import RunStatus
from paceline_server.app.strategies import StrategyCatalog, StrategyInfo
from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import InvalidReport, InvalidRequest, MalformedBody
from paceline_server.domain.history import CurriculumHistory
from paceline_server.domain.inspection import CurriculumInspection
from paceline_server.domain.validation import check_shape
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.store.base import CurriculumRecord


# ------------------------------------------------------------------ JSON fields
def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dump_json(value: Any) -> str:
    """JSON text of an object that REST would render (numpy scalars included)."""
    return json.dumps(value, separators=(",", ":"), default=_default)


def load_object(text: str, field: str, *, empty: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """A JSON object field of a request; `empty` answers an empty string."""
    if not text and empty is not None:
        return dict(empty)
    try:
        value = json.loads(text)
    except ValueError as exc:  # also an integer over Python's 4300 digits, not only syntax
        raise MalformedBody(f"{field} is not valid JSON: {exc}", {"field": field}) from exc
    except RecursionError as exc:
        raise MalformedBody(f"{field} is nested too deeply", {"field": field}) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object", {"field": field})
    return value


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


# ------------------------------------------------------------------ responses
def curriculum(record: CurriculumRecord) -> pb.Curriculum:
    return pb.Curriculum(
        name=record.name, spec_json=dump_json(record.spec),
        created_at=timestamp(record.created_at), seq=record.head_seq,
        num_samples=record.num_samples, distributions=record.distributions,
        objectives=record.objectives)


def run(status: RunStatus) -> pb.Run:
    record = status.record
    return pb.Run(run_id=record.run_id, curriculum=record.curriculum,
                  created_at=timestamp(record.created_at),
                  last_heartbeat=timestamp(record.last_heartbeat), stale=status.stale,
                  metadata_json=dump_json(record.metadata))


def batch(value: Batch, objectives: tuple[str, ...], distributions: tuple[str, ...],
          part: int = 0) -> pb.Batch:
    message = pb.Batch(
        run_id=value.run_id, step=value.step, indices=value.indices.tolist(),
        objectives=objectives, reward_weights=value.reward_weights.tolist(),
        reward_scale=value.reward_scale, distributions=distributions,
        probabilities=value.probabilities.tolist(),
        skipped_zero_variance=value.skipped_zero_variance, seq=value.clock, part=part,
        rollouts_saved=value.rollouts_saved)
    if value.loss_weights is not None:
        message.loss_weights.f64.extend(value.loss_weights.tolist())
    return message


def batch_view(view: BatchView) -> pb.Batch:
    return batch(view.batch, view.objectives, view.distributions, view.part)


def state(name: str, view: CurriculumInspection) -> pb.State:
    return pb.State(
        name=name, seq=view.clock, objectives=view.objectives,
        reward_weights=view.reward_weights, reward_scale=view.reward_scale,
        distributions=[pb.DistributionStats(
            name=d.name, size=d.size, probability=d.probability, success=d.success,
            mean_abs_advantage=d.mean_abs_advantage, learning_progress=d.learning_progress,
            zero_variance_fraction=d.zero_variance_fraction, reports=d.reports,
            sampled=d.sampled, rollouts=d.rollouts,
            health=pb.Health(stalled=d.health.stalled, saturated=d.health.saturated,
                             hopeless=d.health.hopeless))
            for d in view.distributions],
        weight_history=[pb.WeightRecord(seq=r.clock, weights=r.weights, scale=r.scale)
                        for r in view.weight_history],
        hypervolume_history=[pb.HypervolumeRecord(seq=r.clock, hypervolume=r.hypervolume,
                                                  point=r.point)
                             for r in view.hypervolume_history],
        sampler_json=dump_json(view.sampler), weighting_json=dump_json(view.weighting),
        explanations=[pb.Explanation(
            name=e.name, probability=e.probability,
            terms={k: math.nan if v is None else v for k, v in e.terms.items()},
            sentence=e.sentence, flags=e.flags) for e in view.explanations])


def history(view: CurriculumHistory) -> pb.History:
    """A history as columns (NaN stays NaN: protobuf doubles carry it)."""
    return pb.History(
        name=view.name, head_seq=view.head_seq, first_seq=view.first_seq, every=view.every,
        complete=view.complete, replayed_seq=view.replayed_seq, objectives=view.objectives,
        distributions=view.distributions, seq=view.seq.tolist(), step=view.step.tolist(),
        time=view.time.tolist(),
        per_distribution=[pb.DistributionHistory(
            name=name, **{key: values[:, d].tolist() for key, values in view.series.items()})
            for d, name in enumerate(view.distributions)],
        reward_weights=[pb.ObjectiveSeries(name=o, values=view.reward_weights[:, i].tolist())
                        for i, o in enumerate(view.objectives)],
        reward_scale=view.reward_scale.tolist(), hypervolume=view.hypervolume.tolist())


def _strategy(info: StrategyInfo) -> pb.Strategy:
    return pb.Strategy(
        name=info.name, origin=info.origin, is_default=info.is_default,
        description=info.description, error=info.error or "",
        params=[pb.StrategyParam(
            name=p.name, type=p.type, default_json=dump_json(p.default), required=p.required,
            choices_json="" if p.choices is None else dump_json(list(p.choices)))
            for p in info.params])


def strategies(catalog: StrategyCatalog) -> pb.ListStrategiesResponse:
    return pb.ListStrategiesResponse(
        samplers=[_strategy(i) for i in catalog.samplers],
        weightings=[_strategy(i) for i in catalog.weightings],
        default_sampler_json=dump_json(catalog.default_sampler),
        default_weighting_json=dump_json(catalog.default_weighting))


# ------------------------------------------------------------------ reports
def array(message: pb.Array, field: str) -> np.ndarray:
    """A packed array as numpy (a buffer copy, not a per-value loop), checked against
    its shape."""
    if message.f64 and message.f32:
        raise InvalidReport(f"{field}: give the values in f64 or f32, not both",
                            {"field": field})
    values = np.array(message.f32, dtype=np.float32) if message.f32 \
        else np.array(message.f64, dtype=np.float64)
    if not message.shape:
        return values
    shape = check_shape(list(message.shape), field, InvalidReport)
    if math.prod(shape) != values.size:
        raise InvalidReport(f"{field}: {values.size} values do not fit shape {shape}",
                            {"field": field, "shape": shape})
    return values.reshape(shape)


def report_body(request: pb.ReportRequest) -> Mapping[str, Any]:
    """The mapping `parse_report` takes, in the form (dense or flat) the request chose."""
    body: dict[str, Any] = {"run_id": request.run_id, "step": request.step}
    if request.rollout_indices:
        body["rollout_indices"] = np.array(request.rollout_indices, dtype=np.int64)
        if request.group_ids:
            body["group_ids"] = np.array(request.group_ids, dtype=np.int64)
    else:
        body["indices"] = np.array(request.indices, dtype=np.int64)
    if request.HasField("rewards"):
        body["rewards"] = array(request.rewards, "rewards")
    for name in ("advantages", "grad_products", "eval_objectives"):
        if request.HasField(name):
            body[name] = array(getattr(request, name), name)
    if request.eval_objectives_by_name:
        if "eval_objectives" in body:
            raise InvalidReport("give eval_objectives or eval_objectives_by_name, not both",
                                {"field": "eval_objectives"})
        body["eval_objectives"] = dict(request.eval_objectives_by_name)
    if request.dropped:
        body["dropped"] = np.array(request.dropped, dtype=np.int64)
    if request.unserved:
        body["unserved"] = request.unserved
    return body
