"""The REST calls, as data: each function returns the `Request` for one endpoint and the
sync and async clients only send them and validate the replies. Keeps paths and bodies in
one place."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, SupportsIndex
from urllib.parse import quote

from paceline._transport import Reply, Request, RetryPolicy
from paceline.errors import Conflict
from paceline.models import Batch, ReportAck, minimized_objectives, objective_bounds

PREFIX = "/v1/curricula"
STRATEGIES = "/v1/strategies"
#: Heartbeats are not retried: the next one comes soon, and a stuck retry loop would
#: delay closing the run.
HEARTBEAT_POLICY = RetryPolicy(max_attempts=1)


def _path(name: str, *rest: str) -> str:
    return "/".join([PREFIX, quote(name, safe=""), *(quote(r, safe="") for r in rest)])


def create_curriculum(spec: Mapping[str, Any], exist_ok: bool) -> Request:
    return Request("POST", PREFIX, json={**spec, "exist_ok": exist_ok})


def created_elsewhere(reply: Reply) -> bool:
    """True when a create answered 409 only because an earlier attempt of the same call
    (whose answer was lost) created that very spec: the caller fetches it instead."""
    if reply.status != 409 or reply.attempts < 2:
        return False
    error = reply.error()
    return isinstance(error, Conflict) and error.code == "CURRICULUM_EXISTS" \
        and error.details.get("same_spec") is True


def get_curriculum(name: str) -> Request:
    return Request("GET", _path(name))


def list_curricula(limit: int, offset: int) -> Request:
    return Request("GET", PREFIX, params={"limit": str(limit), "offset": str(offset)})


def delete_curriculum(name: str) -> Request:
    return Request("DELETE", _path(name), params={"confirm": name})


def deleted(reply: Reply) -> bool:
    """A delete succeeded, or answered 404 after an earlier lost attempt did the work."""
    return reply.ok or (reply.status == 404 and reply.attempts > 1)


def attach_run(name: str, run_id: str, metadata: Mapping[str, Any] | None) -> Request:
    return Request("POST", _path(name, "runs"),
                   json={"run_id": run_id, "metadata": dict(metadata or {})})


def get_run(name: str, run_id: str) -> Request:
    return Request("GET", _path(name, "runs", run_id))


def list_runs(name: str) -> Request:
    return Request("GET", _path(name, "runs"))


def heartbeat(name: str, run_id: str) -> Request:
    return Request("POST", _path(name, "runs", run_id, "heartbeat"), policy=HEARTBEAT_POLICY)


def next_batch(name: str, run_id: str, step: SupportsIndex, size: SupportsIndex | None,
               part: SupportsIndex = 0) -> Request:
    """The batch of (run, step); with `part` >= 1 a refill of that step."""
    body: dict[str, Any] = {"run_id": run_id, "step": operator.index(step)}
    if size is not None:
        body["size"] = operator.index(size)
    if operator.index(part):
        body["part"] = operator.index(part)
    return Request("POST", _path(name, "batches"), json=body)


def report(name: str, content: bytes, headers: Mapping[str, str], idempotency_key: str,
           next_step: SupportsIndex | None = None, next_size: SupportsIndex | None = None
           ) -> Request:
    params = {}
    if next_step is not None:
        params["next_step"] = str(operator.index(next_step))
    if next_size is not None:
        params["next_size"] = str(operator.index(next_size))
    return Request("POST", _path(name, "reports"), content=content, params=params,
                   headers={**headers, "Idempotency-Key": idempotency_key})


def batch(served: Mapping[str, Any], spec: Mapping[str, Any]) -> Batch:
    """A served batch, knowing the direction and bounds of the curriculum's objectives
    (what `Batch.scalarize` needs)."""
    return Batch.model_validate({**served, "minimize": minimized_objectives(spec),
                                 "bounds": objective_bounds(spec)})


def report_ack(answer: Mapping[str, Any], spec: Mapping[str, Any]) -> ReportAck:
    """The ack, with the batch it carries when the report asked for one."""
    served = answer.get("batch")
    return ReportAck(seq=answer["seq"], replayed=answer["replayed"],
                     batch=None if served is None else batch(served, spec),
                     rollouts_generated=answer.get("rollouts_generated"),
                     rollouts_trained=answer.get("rollouts_trained"),
                     groups_dropped=answer.get("groups_dropped"))


def state(name: str) -> Request:
    return Request("GET", _path(name, "state"))


def history(name: str, every: SupportsIndex | None, since: SupportsIndex | None) -> Request:
    params = {}
    if every is not None:
        params["every"] = str(operator.index(every))
    if since is not None:
        params["since"] = str(operator.index(since))
    return Request("GET", _path(name, "history"), params=params)


def strategies() -> Request:
    return Request("GET", STRATEGIES)
