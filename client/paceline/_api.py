"""Reading answers: a `Reply`'s REST-shaped body as the client's models, and the two
answers whose meaning depends on the attempts (a create or delete whose first answer was
lost). Shared by the sync and async clients and every transport."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paceline._transport import Reply
from paceline.errors import Conflict
from paceline.models import Batch, ReportAck, minimized_objectives, objective_bounds


def created_elsewhere(reply: Reply) -> bool:
    """True when a create answered 409 only because an earlier attempt of the same call
    (whose answer was lost) created that very spec: the caller fetches it instead."""
    if reply.status != 409 or reply.attempts < 2:
        return False
    error = reply.error()
    return isinstance(error, Conflict) and error.code == "CURRICULUM_EXISTS" \
        and error.details.get("same_spec") is True


def deleted(reply: Reply) -> bool:
    """A delete succeeded, or answered 404 after an earlier lost attempt did the work."""
    return reply.ok or (reply.status == 404 and reply.attempts > 1)


def batch(served: Mapping[str, Any], spec: Mapping[str, Any]) -> Batch:
    """A served batch, knowing the direction and bounds of the curriculum's objectives
    (what `Batch.scalarize` needs)."""
    return Served(spec).batch(served)


def report_ack(answer: Mapping[str, Any], spec: Mapping[str, Any]) -> ReportAck:
    """The ack, with the batch it carries when the report asked for one."""
    return Served(spec).report_ack(answer)


class Served:
    """Reads one curriculum's batches and acks: the direction and bounds of its
    objectives are read off the spec once, not on every batch."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.minimize = minimized_objectives(spec)
        self.bounds = objective_bounds(spec)

    def batch(self, served: Mapping[str, Any]) -> Batch:
        return Batch.model_validate({**served, "minimize": self.minimize,
                                     "bounds": self.bounds})

    def report_ack(self, answer: Mapping[str, Any]) -> ReportAck:
        served = answer.get("batch")
        return ReportAck(seq=answer["seq"], replayed=answer["replayed"],
                         batch=None if served is None else self.batch(served),
                         rollouts_generated=answer.get("rollouts_generated"),
                         rollouts_trained=answer.get("rollouts_trained"),
                         groups_dropped=answer.get("groups_dropped"))


def served(holder: Any) -> Served:
    """The `Served` reader of a curriculum handle (rebuilt when its spec object is
    replaced, e.g. by a refresh)."""
    reader: Served | None = getattr(holder, "_served", None)
    spec = holder.info.spec
    if reader is None or reader.spec is not spec:
        reader = holder._served = Served(spec)
    return reader
