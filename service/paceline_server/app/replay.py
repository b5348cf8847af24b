"""What-if replay: fold a curriculum's stored reports into another strategy, offline, and
compare the choices each would have made.

It is off-policy: the stored reports were produced by batches the original strategy
chose, so this answers "what would X have asked for given the same evidence", not "what
would have happened under X" — X would have drawn other samples, seen other rewards and
drifted elsewhere (that needs new rollouts). Where the two mixes part, the alternative's
later choices rest on evidence it would not have collected itself."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from paceline_server.domain.errors import Conflict, InvalidRequest
from paceline_server.domain.report import Report
from paceline_server.domain.spec import CurriculumSpec, StrategySpec
from paceline_server.engine import CurriculumEngine


@dataclass(frozen=True)
class ReplayPoint:
    seq: int
    original_probabilities: tuple[float, ...]
    alternative_probabilities: tuple[float, ...]
    original_weights: tuple[float, ...]
    alternative_weights: tuple[float, ...]

    @property
    def total_variation(self) -> float:
        """Half the L1 distance between the two probability vectors (0 = same mix)."""
        a = np.asarray(self.original_probabilities)
        b = np.asarray(self.alternative_probabilities)
        return float(0.5 * np.abs(a - b).sum())


def alternative_spec(spec: CurriculumSpec, sampler: Any = None,
                     weighting: Any = None) -> CurriculumSpec:
    data = spec.to_dict()
    if sampler is not None:
        data["sampler"] = StrategySpec.parse(sampler, "sampler").to_dict()
    if weighting is not None:
        data["weighting"] = StrategySpec.parse(weighting, "weighting").to_dict()
    return CurriculumSpec.from_dict(data)


def replay(spec: CurriculumSpec, reports: Iterable[tuple[int, Report]], sampler: Any = None,
           weighting: Any = None, every: int = 1, head: int | None = None
           ) -> list[ReplayPoint]:
    """Fold `(seq, report)` pairs — the log from its first report on — into the
    original and the alternative engines and record both choices every `every` reports
    (and after the last one). A log that does not start at seq 1 or skips one (events
    pruned with PACELINE_PRUNE_EVENTS) is refused: a replay from the start would fold
    another history than the curriculum's; so is one that ends before `head` (the
    curriculum's seq, when known: a log pruned to nothing has no first seq to check)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise InvalidRequest(f"every must be a positive integer; got {every!r}",
                             {"field": "every"})
    original = CurriculumEngine(spec)
    alternative = CurriculumEngine(alternative_spec(spec, sampler, weighting))
    points: list[ReplayPoint] = []

    def record(seq: int) -> None:
        a, b = original.inspect(), alternative.inspect()
        points.append(ReplayPoint(
            seq=seq,
            original_probabilities=tuple(d.probability for d in a.distributions),
            alternative_probabilities=tuple(d.probability for d in b.distributions),
            original_weights=a.reward_weights, alternative_weights=b.reward_weights))

    record(0)
    last = 0
    for seq, report in reports:
        if seq != last + 1:
            raise Conflict(
                f"the log holds seq {seq} where {last + 1} was due (reports pruned with "
                "PACELINE_PRUNE_EVENTS?): a replay from the start cannot rebuild it",
                {"seq": seq, "expected": last + 1})
        original.apply(report)
        alternative.apply(report)
        last = seq
        if seq % every == 0:
            record(seq)
    if head is not None and last < head:
        raise Conflict(
            f"the log ends at seq {last} but the curriculum is at seq {head} (reports "
            "pruned with PACELINE_PRUNE_EVENTS?): a replay from the start cannot rebuild "
            "it", {"seq": last, "expected": head})
    if points[-1].seq != last:
        record(last)
    return points
