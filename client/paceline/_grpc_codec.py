"""The client's operations as calls of `paceline.v1.Paceline`, and its answers in the
shape REST gives them.

Each operation (`_operations`) is encoded directly as the request message of its RPC (no
REST path in between); the answer comes back as the same `Reply` the other transports
give (JSON-shaped body, HTTP-equivalent status), so the clients read every transport's
answers alike. Report arrays go as packed floats with shapes, written straight into the
protobuf wire format instead of value by value.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from paceline import _grpc_pb2 as pb
from paceline import _operations as op
from paceline._payloads import _rewards, plain
from paceline.errors import InvalidInput

__all__ = ["Call", "encode", "pack", "report_message", "unpack"]

SERVICE = "paceline.v1.Paceline"


@dataclass(frozen=True)
class Call:
    """One RPC for one operation: what to send, and how to read the answer as REST would
    (its success status and JSON-shaped body)."""

    method: str
    message: Message
    status: int
    body: Callable[[Any], Any]


# ------------------------------------------------------------------ answers
def _time(stamp: Timestamp) -> str:
    return stamp.ToJsonString()  # RFC 3339, parsed by the models as REST's values are


def _object(text: str) -> Any:
    return json.loads(text) if text else {}


def curriculum(message: pb.Curriculum) -> dict[str, Any]:
    return {"name": message.name, "spec": _object(message.spec_json),
            "created_at": _time(message.created_at), "seq": message.seq,
            "num_samples": message.num_samples, "distributions": list(message.distributions),
            "objectives": list(message.objectives)}


def run(message: pb.Run) -> dict[str, Any]:
    return {"run_id": message.run_id, "curriculum": message.curriculum,
            "created_at": _time(message.created_at),
            "last_heartbeat": _time(message.last_heartbeat), "stale": message.stale,
            "metadata": _object(message.metadata_json)}


def batch(message: pb.Batch) -> dict[str, Any]:
    return {"run_id": message.run_id, "step": message.step, "indices": list(message.indices),
            "reward_weights": dict(zip(message.objectives, message.reward_weights,
                                       strict=True)),
            "reward_scale": message.reward_scale,
            "loss_weights": unpack(message.loss_weights).tolist()
            if message.HasField("loss_weights") else None,
            "probabilities": dict(zip(message.distributions, message.probabilities,
                                      strict=True)),
            "skipped_zero_variance": message.skipped_zero_variance,
            "rollouts_saved": message.rollouts_saved, "seq": message.seq,
            "part": message.part}


def report_ack(message: pb.ReportAck, dynamic: bool = True) -> dict[str, Any]:
    """The ack as REST shows it: the rollout counts only for a report that named its
    dropped groups (`dynamic`; protobuf cannot tell an empty `dropped` from none, so the
    caller says), though the service counts every report."""
    answer = {"seq": message.seq, "replayed": message.replayed,
              "batch": batch(message.batch) if message.HasField("batch") else None}
    if dynamic:
        answer.update(rollouts_generated=message.rollouts_generated,
                      rollouts_trained=message.rollouts_trained,
                      groups_dropped=message.groups_dropped)
    return answer


def _plain_report_ack(message: pb.ReportAck) -> dict[str, Any]:
    return report_ack(message, dynamic=False)


def _optional(message: Message, field: str) -> float | None:
    value: float = getattr(message, field)
    return value if message.HasField(field) else None


def state(message: pb.State) -> dict[str, Any]:
    objectives = list(message.objectives)
    return {
        "name": message.name, "seq": message.seq, "objectives": objectives,
        "reward_weights": dict(zip(objectives, message.reward_weights, strict=True)),
        "reward_scale": message.reward_scale,
        "distributions": [{
            "name": d.name, "size": d.size, "probability": d.probability,
            "success": _optional(d, "success"),
            "mean_abs_advantage": _optional(d, "mean_abs_advantage"),
            "learning_progress": d.learning_progress,
            "zero_variance_fraction": _optional(d, "zero_variance_fraction"),
            "reports": d.reports, "sampled": d.sampled, "rollouts": d.rollouts,
            "health": {"stalled": d.health.stalled, "saturated": d.health.saturated,
                       "hopeless": d.health.hopeless}} for d in message.distributions],
        "weight_history": [{"seq": r.seq, "weights": dict(zip(objectives, r.weights,
                                                               strict=True)),
                            "scale": r.scale} for r in message.weight_history],
        "hypervolume_history": [{"seq": r.seq, "hypervolume": r.hypervolume,
                                 "point": list(r.point)} for r in message.hypervolume_history],
        "sampler": _object(message.sampler_json), "weighting": _object(message.weighting_json),
        "explanations": [{
            "name": e.name, "probability": e.probability,
            "terms": {k: _finite(v) for k, v in e.terms.items()}, "sentence": e.sentence,
            "flags": list(e.flags)} for e in message.explanations],
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _finite_list(values: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


def history(message: pb.History) -> dict[str, Any]:
    """A history as the REST body (NaN as None)."""
    return {
        "name": message.name, "head_seq": message.head_seq, "first_seq": message.first_seq,
        "every": message.every, "complete": message.complete,
        "replayed_seq": message.replayed_seq, "objectives": list(message.objectives),
        "distributions": list(message.distributions), "seq": list(message.seq),
        "step": list(message.step), "time": list(message.time),
        "per_distribution": {d.name: {
            "probability": list(d.probability), "success": _finite_list(d.success),
            "mean_abs_advantage": _finite_list(d.mean_abs_advantage),
            "zero_variance_fraction": _finite_list(d.zero_variance_fraction),
            "stalled": list(d.stalled), "saturated": list(d.saturated),
            "hopeless": list(d.hopeless)} for d in message.per_distribution},
        "reward_weights": {s.name: list(s.values) for s in message.reward_weights},
        "reward_scale": list(message.reward_scale),
        "hypervolume": _finite_list(message.hypervolume),
    }


# ------------------------------------------------------------------ arrays
def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pack(value: np.ndarray) -> bytes:
    """The wire bytes of an `Array` holding `value`: the shape, then the raw
    little-endian values as one packed field (float32 stays float32, anything else goes
    as float64). Parsing these is a copy; filling the field value by value is 10x slower."""
    f32 = value.dtype == np.float32
    data = np.ascontiguousarray(value, dtype="<f4" if f32 else "<f8").tobytes()
    head = pb.Array(shape=value.shape).SerializeToString()
    if not data:
        return head
    return head + (b"\x1a" if f32 else b"\x12") + _varint(len(data)) + data


def unpack(message: pb.Array) -> np.ndarray:
    values = np.array(message.f32, dtype=np.float32) if message.f32 \
        else np.array(message.f64, dtype=np.float64)
    return values.reshape(list(message.shape)) if message.shape else values


#: What a list may hold that the service does not read as a number, by its JSON name
#: (booleans are 0/1 in a report's values, refused in its indices).
_NOT_NUMBERS: dict[type, str] = {str: "string", np.str_: "string", bytes: "bytes",
                                 bool: "boolean", np.bool_: "boolean", type(None): "null"}
_BOOLEANS = (bool, np.bool_)


def _number(value: Any, field: str, booleans: bool = True) -> Any:
    """`value` unless the service would refuse it as an element of `field` from JSON: a
    string or None, or a boolean where `booleans` is false (indices). The packed floats
    must not turn "0.5" into a number that HTTP and the embedded client refuse."""
    name = _NOT_NUMBERS.get(type(value))
    if name is not None and not (booleans and isinstance(value, _BOOLEANS)):
        of = "numbers" if booleans else "integers"
        raise InvalidInput("INVALID_REPORT", f"{field} must be an array of {of}; found "
                           f"{name}", {"field": field})
    return value


def _numpy(value: Any, field: str, booleans: bool = True) -> np.ndarray:
    """An array from numpy, torch (any device), nested lists or scalars, refused as the
    service refuses it: lists hold numbers (booleans only where `booleans`), and an
    array's dtype is numeric (a bool array goes over HTTP as a typed array of 0/1)."""
    if isinstance(value, list | tuple):
        try:
            cells = np.asarray(value, dtype=object).ravel().tolist()
        except ValueError:
            cells = []  # ragged: refused below
        for kind in set(map(type, cells)):  # each type once, not each value
            if kind in _NOT_NUMBERS:
                _number(next(c for c in cells if type(c) is kind), field, booleans)
    else:
        _number(value, field, booleans)
    try:
        array = np.asarray(value)
    except (TypeError, RuntimeError):  # e.g. a CUDA tensor: go through host memory
        array = np.asarray(plain(value))
    except ValueError as exc:
        raise InvalidInput("INVALID_REPORT", f"{field} must be a rectangular numeric array",
                           {"field": field}) from exc
    if array.dtype.kind not in "biuf":
        raise InvalidInput("INVALID_REPORT", f"{field} must be an array of numbers; got "
                           f"dtype {array.dtype}", {"field": field})
    return array


def _floats(value: Any, field: str) -> np.ndarray:
    array = _numpy(value, field)
    if array.dtype == np.float32:
        return array
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("INVALID_REPORT", f"{field} must be a numeric array",
                           {"field": field}) from exc


def _ints(value: Any, field: str, floats: bool = True) -> list[int]:
    """Sample indices or group ids as int64, refused by the service's rules for what it
    reads from JSON: whole floats only where it takes them (`floats`; not in `dropped`),
    and no uint64 above int64's range (it was wrapped to a negative index)."""
    array = _numpy(value, field, booleans=False)
    if array.ndim != 1:
        raise InvalidInput("INVALID_REPORT", f"{field} must be a 1-D list of integers; "
                           f"got shape {array.shape}", {"field": field})
    integral = array.dtype.kind in "iu" or (
        floats and array.dtype.kind == "f" and bool(np.all(np.isfinite(array)))
        and bool(np.all(array == np.round(array))))
    if array.size and not integral:
        raise InvalidInput("INVALID_REPORT", f"{field} must be integers", {"field": field})
    if array.dtype == np.uint64 and array.size \
            and int(array.max()) > np.iinfo(np.int64).max:
        raise InvalidInput("INVALID_REPORT", f"{field} out of range", {"field": field})
    result: list[int] = array.astype(np.int64).tolist()
    return result


def report_message(*, run_id: str, step: SupportsIndex, indices: Any, rewards: Any,
                   objectives: Sequence[str], advantages: Any = None, group_ids: Any = None,
                   grad_products: Any = None, eval_objectives: Any = None,
                   dropped: Any = None, idempotency_key: str, curriculum: str,
                   next_step: SupportsIndex | None = None,
                   next_size: SupportsIndex | None = None,
                   unserved: str | None = None) -> pb.ReportRequest:
    """`_payloads.report_body` as a `ReportRequest` (dense, or flat with `group_ids`),
    keeping numpy/torch arrays as arrays all the way to the wire."""
    message = pb.ReportRequest(curriculum=curriculum, run_id=run_id,
                               step=operator.index(step), idempotency_key=idempotency_key)
    if next_step is not None:
        message.next_step = operator.index(next_step)
    if next_size is not None:
        message.next_size = operator.index(next_size)
    if unserved is not None:
        message.unserved = unserved
    if group_ids is None:
        message.indices.extend(_ints(indices, "indices"))
    else:
        message.rollout_indices.extend(_ints(indices, "rollout_indices"))
        message.group_ids.extend(_ints(group_ids, "group_ids"))
    if isinstance(rewards, Mapping):
        rewards = _rewards(rewards, objectives)
    message.rewards.MergeFromString(pack(_floats(rewards, "rewards")))
    for field, value in (("advantages", advantages), ("grad_products", grad_products)):
        if value is not None:
            getattr(message, field).MergeFromString(pack(_floats(value, field)))
    if dropped is not None:
        message.dropped.extend(_ints(dropped, "dropped", floats=False))
    if isinstance(eval_objectives, Mapping):
        message.eval_objectives_by_name.update(
            {str(k): float(_number(v, "eval_objectives")) for k, v in eval_objectives.items()})
    elif eval_objectives is not None:
        message.eval_objectives.MergeFromString(
            pack(_floats(eval_objectives, "eval_objectives")))
    return message


def strategies(message: pb.ListStrategiesResponse) -> dict[str, Any]:
    def one(item: pb.Strategy) -> dict[str, Any]:
        return {"name": item.name, "origin": item.origin, "default": item.is_default,
                "description": item.description, "error": item.error or None,
                "params": [{"name": p.name, "type": p.type,
                            "default": json.loads(p.default_json),
                            "required": p.required,
                            "choices": json.loads(p.choices_json) if p.choices_json
                            else None} for p in item.params]}

    return {"samplers": [one(i) for i in message.samplers],
            "weightings": [one(i) for i in message.weightings],
            "default_sampler": _object(message.default_sampler_json),
            "default_weighting": _object(message.default_weighting_json)}


# ------------------------------------------------------------------ operations
def _create(o: op.CreateCurriculum) -> Call:
    message = pb.CreateCurriculumRequest(spec_json=json.dumps(dict(o.spec)),
                                         exist_ok=bool(o.exist_ok))
    return Call("CreateCurriculum", message, 201, lambda r: curriculum(r.curriculum))


def _delete(o: op.DeleteCurriculum) -> Call:
    message = pb.DeleteCurriculumRequest(name=o.curriculum, confirm=o.curriculum)
    return Call("DeleteCurriculum", message, 204, lambda r: None)


def _attach(o: op.AttachRun) -> Call:
    message = pb.AttachRunRequest(curriculum=o.curriculum, run_id=o.run_id,
                                  metadata_json=json.dumps(dict(o.metadata or {})))
    return Call("AttachRun", message, 201, run)


def _next_batch(o: op.NextBatch) -> Call:
    message = pb.NextBatchRequest(curriculum=o.curriculum, run_id=o.run_id, step=o.step)
    if o.size is not None:
        message.size = o.size
    if o.part:
        message.part = o.part
    return Call("NextBatch", message, 200, batch)


def _report(o: op.Report) -> Call:
    message = report_message(curriculum=o.curriculum, idempotency_key=o.idempotency_key,
                             next_step=o.next_step, next_size=o.next_size, **o.arrays())
    return Call("Report", message, 200,
                report_ack if o.dropped is not None else _plain_report_ack)


def _history(o: op.GetHistory) -> Call:
    message = pb.GetHistoryRequest(curriculum=o.curriculum)
    if o.every is not None:
        message.every = o.every
    if o.since is not None:
        message.since = o.since
    return Call("GetHistory", message, 200, history)


def _token(message: pb.ListCurriculaResponse | pb.ListRunsResponse) -> dict[str, str | None]:
    """A listing's next_page_token as REST answers it (None: the last page), or nothing
    when the server left the field unset: one older than page tokens (`Pages` then
    reads on by offset). A server with tokens always sets it, empty on the last page."""
    if not message.HasField("next_page_token"):
        return {}
    return {"next_page_token": message.next_page_token or None}


ENCODERS: dict[type[op.Operation], Callable[[Any], Call]] = {
    op.CreateCurriculum: _create,
    op.GetCurriculum: lambda o: Call("GetCurriculum", pb.GetCurriculumRequest(
        name=o.curriculum), 200, curriculum),
    op.ListCurricula: lambda o: Call(
        "ListCurricula", pb.ListCurriculaRequest(limit=o.limit, offset=o.offset,
                                                 page_token=o.page_token or ""), 200,
        lambda r: {"curricula": [curriculum(c) for c in r.curricula], **_token(r)}),
    op.DeleteCurriculum: _delete,
    op.ListStrategies: lambda o: Call("ListStrategies", pb.ListStrategiesRequest(), 200,
                                      strategies),
    op.GetState: lambda o: Call("GetState", pb.GetStateRequest(curriculum=o.curriculum),
                                200, state),
    op.GetHistory: _history,
    op.AttachRun: _attach,
    op.GetRun: lambda o: Call("GetRun", pb.GetRunRequest(
        curriculum=o.curriculum, run_id=o.run_id), 200, run),
    op.ListRuns: lambda o: Call(
        "ListRuns", pb.ListRunsRequest(curriculum=o.curriculum, limit=o.limit,
                                       offset=o.offset, page_token=o.page_token or ""),
        200, lambda r: {"runs": [run(x) for x in r.runs], **_token(r)}),
    op.Heartbeat: lambda o: Call("Heartbeat", pb.HeartbeatRequest(
        curriculum=o.curriculum, run_id=o.run_id), 200, run),
    op.NextBatch: _next_batch,
    op.Report: _report,
}


def encode(operation: op.Operation) -> Call:
    """The RPC that performs `operation`. Text protobuf cannot carry (a lone surrogate in
    a run id or a key) is refused as the service refuses it over the other transports;
    so is an integer beyond int64 (a step, a size), which protobuf refused with a bare
    ValueError."""
    try:
        return ENCODERS[type(operation)](operation)
    except UnicodeEncodeError as exc:
        raise InvalidInput("INVALID_REQUEST", f"{exc.object!r} is not valid Unicode text "
                           f"({exc.reason})", {}) from None
    except ValueError as exc:
        if isinstance(exc, InvalidInput) or not str(exc).startswith("Value out of range"):
            raise
        raise InvalidInput("INVALID_REQUEST", f"{exc} (integers must fit in 64 bits)",
                           {}) from None


def response_class(method: str) -> type[Message]:
    """The answer's message class of an RPC, from the service descriptor."""
    output: type[Message] = getattr(
        pb, pb.DESCRIPTOR.services_by_name["Paceline"].methods_by_name[method].output_type.name)
    return output
