"""Dynamic sampling: refill parts of a served step.

A trainer that drops groups after generating them (DAPO's filter drops groups whose
rewards all agree) can ask for more prompts within the same step: part 0 is the step's
batch (`next_batch`), parts 1, 2, ... are refills. Paceline chooses a refill's prompts
from the curriculum's own sampler, excluding every index already served to the step, so
the step's parts never overlap and a report may name indices of any of them.

Each part is proposed once, with its own RNG stream (curriculum seed, run, step, part),
and stored under (run, step, part): asking again returns the same part, like
`next_batch`. Sampler-agnostic: the sampler proposes `size + |served|` indices (at most
N) from the part's stream and the first `size` not yet served are kept, in the
sampler's order; samplers that may repeat an index (a distribution smaller than its
slots) are topped up uniformly from the unserved rest, deterministically, from a child
of the part's stream (so, like the sampler's draws, they differ from run to run).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import InvalidRequest, RefillTooLarge
from paceline_server.engine.engine import CurriculumEngine, run_stream

#: Refill parts a step may have (part 0, the step's batch, not counted).
MAX_PARTS = 64


def check_part(part: object) -> int:
    """A refill part number: an integer in [1, MAX_PARTS]."""
    if isinstance(part, bool) or not isinstance(part, int | np.integer) \
            or not 1 <= part <= MAX_PARTS:
        raise InvalidRequest(f"part must be an integer in [1, {MAX_PARTS}] for a refill "
                             f"(part 0 is the step's batch); got {part!r}",
                             {"field": "part", "maximum": MAX_PARTS})
    return int(part)


def check_refill_size(engine: CurriculumEngine, run_id: str, step: int,
                      size: object) -> int:
    """A refill's size (default: the curriculum's batch size): a positive integer; one
    beyond what the step has left unserved is refused later, as REFILL_TOO_LARGE."""
    engine.check_batch_request(run_id, step)
    if size is None:
        return engine.spec.batch_size
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise InvalidRequest(f"size must be a positive integer; got {size!r}",
                             {"field": "size"})
    return int(size)


def served_union(parts: list[Batch]) -> np.ndarray:
    """Every index served by the given parts of one step (sorted, unique)."""
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate([p.indices for p in parts]).astype(np.int64))


def propose_refill(engine: CurriculumEngine, run_id: str, step: int, part: int, size: int,
                   served: np.ndarray) -> Batch:
    """Refill part `part` of (run, step): `size` indices none of which is in `served`
    (the step's earlier parts). Raises RefillTooLarge when fewer are left unserved."""
    n = engine.layout.num_samples
    left = n - int(served.size)
    if size > left:
        raise RefillTooLarge(
            f"a refill of {size} prompts exceeds the {left} not yet served in step {step} "
            f"(dataset size {n}, {served.size} served)",
            {"field": "size", "maximum": left, "served": int(served.size)})
    proposal = engine.next_batch(run_id, step, min(n, size + int(served.size)), part=part)
    indices = proposal.indices
    fresh = ~np.isin(indices, served)
    first = np.zeros(indices.size, dtype=bool)
    first[np.unique(indices, return_index=True)[1]] = True
    keep = np.flatnonzero(fresh & first)[:size]
    chosen = indices[keep]
    weights = None if proposal.loss_weights is None else proposal.loss_weights[keep]
    missing = size - chosen.size
    if missing:
        # A child of the part's own stream: keyed by the run too (keyed by seed, step and
        # part alone, every run got the same top-up prompts at a step).
        rng = run_stream(engine.spec.seed, run_id, step, part).spawn(1)[0]
        extra = _uniform_unserved(rng, n, np.union1d(served, chosen), missing)
        chosen = np.concatenate([chosen, extra])
        if weights is not None:
            weights = np.concatenate([weights, np.ones(missing)])
    if weights is not None and weights.size:
        weights = weights / weights.mean()
    return dataclasses.replace(proposal, indices=chosen.astype(np.int64),
                               loss_weights=weights)


def _uniform_unserved(rng: np.random.Generator, n: int, taken: np.ndarray,
                      count: int) -> np.ndarray:
    """`count` distinct indices of [0, n) outside `taken`, uniformly: rejection draws
    while most of the dataset is free (O(count)), the explicit complement otherwise."""
    free = n - taken.size
    if free < 4 * count or free < n // 2:
        return rng.choice(np.setdiff1d(np.arange(n, dtype=np.int64), taken), count,
                          replace=False)
    found = np.empty(0, dtype=np.int64)
    while found.size < count:
        draws = rng.integers(0, n, size=2 * count, dtype=np.int64)
        draws = draws[~np.isin(draws, taken) & ~np.isin(draws, found)]
        _, first = np.unique(draws, return_index=True)
        found = np.concatenate([found, draws[np.sort(first)]])
    return found[:count]
