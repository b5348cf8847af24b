"""The client's operations, written once: each is a small record of *what* to do, with no
word of *how* it travels. The clients build them; each transport encodes them its own way
(`_http`: a REST request, `_grpc_codec`: a protobuf message of the matching RPC,
`_embedded`: a call of the service's application layer in this process) and answers a
`Reply` whose body has the shape REST gives, so answers are read the same way whatever
the transport (`_api`).

Report arrays stay as the caller gave them (lists, numpy arrays, torch tensors, dicts by
objective): turning them into wire bytes is the transport's business, and the embedded
one never does.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, SupportsIndex

__all__ = [
    "AttachRun",
    "CreateCurriculum",
    "DeleteCurriculum",
    "GetCurriculum",
    "GetHistory",
    "GetRun",
    "GetState",
    "Heartbeat",
    "ListCurricula",
    "ListRuns",
    "ListStrategies",
    "NextBatch",
    "Operation",
    "Report",
    "index_or_none",
]


def index_or_none(value: SupportsIndex | None) -> int | None:
    """An integer argument as an int (numpy and torch integers included), None kept."""
    return None if value is None else operator.index(value)


@dataclass(frozen=True, slots=True)
class Operation:
    """Base class. `operation` names it (logs, tests, fault injection)."""

    operation: ClassVar[str] = ""
    #: Sent once, never retried: heartbeats (the next one comes soon, and a stuck retry
    #: loop would delay closing the run).
    single_attempt: ClassVar[bool] = False


# ---------------------------------------------------------------- curricula
@dataclass(frozen=True, slots=True)
class CreateCurriculum(Operation):
    """Create a curriculum from its spec (`_payloads.curriculum_spec`); with `exist_ok`
    an equal stored spec is answered instead of a conflict."""

    operation: ClassVar[str] = "create_curriculum"
    spec: Mapping[str, Any]
    exist_ok: bool = False


@dataclass(frozen=True, slots=True)
class GetCurriculum(Operation):
    operation: ClassVar[str] = "get_curriculum"
    curriculum: str


@dataclass(frozen=True, slots=True)
class ListCurricula(Operation):
    """A page of the listing: the first, or the one after `page_token` (the
    `next_page_token` of the page before); `offset` is for callers that page by it."""

    operation: ClassVar[str] = "list_curricula"
    limit: int = 100
    offset: int = 0
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteCurriculum(Operation):
    operation: ClassVar[str] = "delete_curriculum"
    curriculum: str


@dataclass(frozen=True, slots=True)
class ListStrategies(Operation):
    operation: ClassVar[str] = "list_strategies"


@dataclass(frozen=True, slots=True)
class GetState(Operation):
    operation: ClassVar[str] = "get_state"
    curriculum: str


@dataclass(frozen=True, slots=True)
class GetHistory(Operation):
    operation: ClassVar[str] = "get_history"
    curriculum: str
    every: int | None = None
    since: int | None = None


# ---------------------------------------------------------------- runs
@dataclass(frozen=True, slots=True)
class AttachRun(Operation):
    operation: ClassVar[str] = "attach_run"
    curriculum: str
    run_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GetRun(Operation):
    operation: ClassVar[str] = "get_run"
    curriculum: str
    run_id: str


@dataclass(frozen=True, slots=True)
class ListRuns(Operation):
    """A page of the curriculum's runs, paged as `ListCurricula` is."""

    operation: ClassVar[str] = "list_runs"
    curriculum: str
    limit: int = 100
    offset: int = 0
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat(Operation):
    operation: ClassVar[str] = "heartbeat"
    single_attempt: ClassVar[bool] = True
    curriculum: str
    run_id: str


# ---------------------------------------------------------------- batches and reports
@dataclass(frozen=True, slots=True)
class NextBatch(Operation):
    """The batch of (run, step); with `part` >= 1 a refill of that step."""

    operation: ClassVar[str] = "next_batch"
    curriculum: str
    run_id: str
    step: int
    size: int | None = None
    part: int = 0


@dataclass(frozen=True, slots=True)
class Report(Operation):
    """One step's rollouts, as the caller gave them (see `Run.report` for the forms).
    `objectives` is the curriculum's objective order, which rewards given by objective
    name are stacked in. The idempotency key is chosen once per call by the client, so
    every attempt of any transport carries the same one."""

    operation: ClassVar[str] = "report"
    curriculum: str
    idempotency_key: str
    run_id: str
    step: int
    indices: Any
    rewards: Any
    objectives: tuple[str, ...]
    advantages: Any = None
    group_ids: Any = None
    grad_products: Any = None
    eval_objectives: Any = None
    dropped: Any = None
    unserved: str | None = None
    next_step: int | None = None
    next_size: int | None = None

    def arrays(self) -> dict[str, Any]:
        """The report's content as `_payloads.report_body` takes it."""
        content: dict[str, Any] = dict(
            run_id=self.run_id, step=self.step, indices=self.indices, rewards=self.rewards,
            objectives=self.objectives, advantages=self.advantages, group_ids=self.group_ids,
            grad_products=self.grad_products, eval_objectives=self.eval_objectives,
            unserved=self.unserved)
        if self.dropped is not None:
            content["dropped"] = self.dropped
        return content
