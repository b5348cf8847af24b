"""Wire models of the REST API (server side; the client keeps its own).

They decode types (a step is an integer, `true` is not); the rules about values are the
operation layer's (app/operations.py), written here as JSON Schema only to document them
(`json_schema_extra`), so that REST and gRPC refuse the same requests the same way."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from paceline_server.app.refill import MAX_PARTS
from paceline_server.domain.validation import MAX_INT, MAX_RUN_ID, TEXT_PATTERN

#: What the operation layer accepts as an identifier (run ids), documented.
IDENTIFIER: dict[str, Any] = {"minLength": 1, "maxLength": MAX_RUN_ID, "pattern": TEXT_PATTERN}


def integer(minimum: int, maximum: int = MAX_INT) -> dict[str, Any]:
    """An integer range the operation layer checks, documented."""
    return {"minimum": minimum, "maximum": maximum}


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorDetail


class CurriculumCreate(BaseModel):
    """A curriculum spec (see the docs for every field) plus `exist_ok`."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "name": "math-rl",
        "layout": {"distributions": [{"name": "gsm8k", "size": 7473},
                                     {"name": "math", "size": 7500}]},
        "objectives": ["accuracy", {"name": "length", "direction": "minimize",
                                    "bounds": [0, 4096]}],
        "sampler": {"kind": "dump_ucb"}, "weighting": "fixed", "batch_size": 256,
        "seed": 0, "exist_ok": True,
    }]})

    exist_ok: bool = Field(default=False, strict=True)  # "yes" or 1 is refused, not read


class CurriculumOut(BaseModel):
    name: str
    spec: dict[str, Any]
    created_at: datetime
    seq: int = Field(description="sequence number of the last report folded in")
    num_samples: int
    distributions: list[str]
    objectives: list[str]


#: The `next_page_token` of a listing, documented once.
NEXT_PAGE_TOKEN = ("pass as ?page_token= for the next page, which starts after this "
                   "one's last entry (exact while entries are created or deleted); "
                   "null on the last page")


class CurriculumList(BaseModel):
    curricula: list[CurriculumOut]
    next_page_token: str | None = Field(default=None, description=NEXT_PAGE_TOKEN)


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(default=None, json_schema_extra=IDENTIFIER,
                               description="choose your own id, or let the server pick one")
    metadata: dict[str, Any] = Field(default_factory=dict, description=(
        "any JSON object of at most 64 KiB and 32 levels, stored with the run"))


class RunOut(BaseModel):
    run_id: str
    curriculum: str
    created_at: datetime
    last_heartbeat: datetime
    stale: bool
    metadata: dict[str, Any]


class RunList(BaseModel):
    runs: list[RunOut]
    next_page_token: str | None = Field(default=None, description=NEXT_PAGE_TOKEN)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(json_schema_extra=IDENTIFIER)
    # Strict, as in the report route: true, "100" or 101.0 is refused, not read as a step.
    step: int = Field(strict=True, json_schema_extra=integer(0))
    size: int | None = Field(default=None, strict=True, json_schema_extra=integer(1))
    part: int = Field(default=0, strict=True, json_schema_extra=integer(0, MAX_PARTS),
                      description=(
        "0: the step's batch; 1, 2, ...: a refill of the step (dynamic sampling): `size` "
        "more prompts none of the step's earlier parts served, chosen by the sampler"))


class BatchOut(BaseModel):
    run_id: str
    step: int
    indices: list[int]
    reward_weights: dict[str, float]
    reward_scale: float
    loss_weights: list[float] | None
    probabilities: dict[str, float]
    skipped_zero_variance: int
    rollouts_saved: int = Field(0, description="rollouts zero-variance skipping saved: "
                                "skipped prompts x the group size it predicted for")
    seq: int = Field(description="sequence number of the state the batch was computed at")
    part: int = Field(0, description="0, or the refill part this is (dynamic sampling)")


class ReportAckOut(BaseModel):
    seq: int
    replayed: bool = Field(description="true when this answers a retry of an applied report")
    batch: BatchOut | None = Field(
        None, description="the batch of (run_id, next_step); present only when the report "
        "asked for it")
    rollouts_generated: int | None = Field(
        None, description="every rollout of the report (all are folded); present when the "
        "report named its `dropped` groups")
    rollouts_trained: int | None = Field(
        None, description="those not in a dropped group; present with rollouts_generated")
    groups_dropped: int | None = Field(None, description="groups the report named dropped")


class ImportOut(BaseModel):
    """What an import changed (all of it committed in one transaction)."""

    name: str
    created: bool = Field(description="false when merged into an existing curriculum")
    seq: int = Field(description="the curriculum's head after the import")
    reports_added: int
    reports_present: int = Field(
        description="reports already in the curriculum (same idempotency key and content)")
    runs_added: int
    runs_present: int


class HealthOut(BaseModel):
    stalled: bool
    saturated: bool
    hopeless: bool


class DistributionOut(BaseModel):
    name: str
    size: int
    probability: float
    success: float | None
    mean_abs_advantage: float | None
    learning_progress: float
    zero_variance_fraction: float | None
    reports: int
    sampled: int
    rollouts: int
    health: HealthOut


class WeightRecordOut(BaseModel):
    seq: int
    weights: dict[str, float]
    scale: float


class HypervolumeRecordOut(BaseModel):
    seq: int
    hypervolume: float
    point: list[float]


class ExplanationOut(BaseModel):
    name: str
    probability: float
    terms: dict[str, float | None] = Field(
        description="the numbers the sampler used for this probability (learnability, "
        "exploration_bonus, pace, ...), plus the windowed success")
    sentence: str = Field(description="the same in one plain sentence")
    flags: list[str] = Field(description="health flags raised: stalled, saturated, hopeless")


class DistributionHistoryOut(BaseModel):
    probability: list[float]
    success: list[float | None] = Field(description="mean over the health window; null "
                                        "before the distribution's first report")
    mean_abs_advantage: list[float | None]
    zero_variance_fraction: list[float | None]
    stalled: list[bool]
    saturated: list[bool]
    hopeless: list[bool]


class HistoryOut(BaseModel):
    name: str
    head_seq: int = Field(description="the curriculum's last report")
    first_seq: int = Field(description="the earliest row the store can give (0 unless "
                           "events were pruned)")
    every: int = Field(description="rows are at multiples of `every`, plus the last")
    complete: bool = Field(description="false while the service is still replaying a long "
                           "log: the rows end at `replayed_seq`; ask again for the rest")
    replayed_seq: int = Field(description="the last report the rows reach")
    objectives: list[str]
    distributions: list[str]
    seq: list[int] = Field(description="row i is the state after report seq[i]")
    step: list[int] = Field(description="that report's trainer step (-1: the start row)")
    time: list[float] = Field(description="when it was stored, seconds since the epoch")
    per_distribution: dict[str, DistributionHistoryOut]
    reward_weights: dict[str, list[float]]
    reward_scale: list[float]
    hypervolume: list[float | None] = Field(description="null where the weighting keeps "
                                            "no Pareto front")


class StateOut(BaseModel):
    name: str
    seq: int
    objectives: list[str]
    reward_weights: dict[str, float]
    reward_scale: float
    distributions: list[DistributionOut]
    weight_history: list[WeightRecordOut]
    hypervolume_history: list[HypervolumeRecordOut]
    sampler: dict[str, Any]
    weighting: dict[str, Any]
    explanations: list[ExplanationOut] = Field(
        default_factory=list, description="why each distribution gets its probability")


class StrategyParamOut(BaseModel):
    name: str
    type: str = Field(description="Python spelling: float, int | None, list[float], ...")
    default: Any = Field(description="the value a spec that omits it gets (JSON)")
    required: bool
    choices: list[Any] | None = Field(None, description="the allowed values, when fixed")


class StrategyOut(BaseModel):
    name: str
    origin: str = Field(description="builtin, registered (at run time) or plugin "
                                    "(entry point)")
    default: bool = Field(description="what a curriculum that names none gets")
    description: str
    params: list[StrategyParamOut]
    error: str | None = Field(None, description="a plug-in that failed to load: why")


class StrategiesOut(BaseModel):
    samplers: list[StrategyOut]
    weightings: list[StrategyOut]
    default_sampler: dict[str, Any] = Field(
        description="the sampler of a spec that names none, parameters filled in")
    default_weighting: dict[str, Any]
