"""What the engine checks of a strategy's answers before it serves or folds them.

Samplers and weightings are plug-ins; a third-party one can raise, or return an index
outside the dataset, a batch of another size, probabilities or weights that are not a
distribution. Served as they were, such a batch was stored as the step's batch (asking
again returned it, reporting it was refused for ever), NaN reached the client as null,
and probabilities of the wrong length failed every later report. Each answer is checked
here, in O(B + D + k), and a failure is a `StrategyError` naming the strategy: nothing is
served or stored, and the curriculum's other requests are unaffected.
"""

from __future__ import annotations

from types import TracebackType

import numpy as np

from paceline_server.domain.errors import PacelineError, StrategyError
from paceline_server.strategies.base import Proposal, WeightDecision

#: How far from 1 a distribution's sum may be (float rounding of a normalisation).
SUM_TOLERANCE = 1e-6


class blame:  # lower case: read as a statement, `with blame("sampler", kind):`
    """Run a call into a strategy: an exception it raises leaves as a `StrategyError`
    naming it, except its own `PacelineError` (a refusal it means), which passes as is."""

    __slots__ = ("kind", "role")

    def __init__(self, role: str, kind: str) -> None:
        self.role, self.kind = role, kind

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, PacelineError):
            raise StrategyError(f"{self.role} {self.kind!r} failed: {type(exc).__name__}: "
                                f"{exc}", {"role": self.role, "kind": self.kind}) from exc


def _broken(role: str, kind: str, what: str) -> StrategyError:
    return StrategyError(f"{role} {kind!r} returned {what}; nothing was served",
                         {"role": role, "kind": kind})


def _distribution(values: object, length: int) -> bool:
    array = np.asarray(values)
    if array.shape != (length,) or array.dtype.kind not in "fiu":
        return False
    # NaN fails `>= 0`; the sum's check also refuses infinities.
    return bool(np.all(array >= 0)) and abs(float(array.sum()) - 1.0) <= SUM_TOLERANCE


def checked_decision(decision: WeightDecision, objectives: int,
                     kind: str) -> WeightDecision:
    if not _distribution(decision.weights, objectives):
        raise _broken("weighting", kind, f"reward weights {np.asarray(decision.weights)!r} "
                      f"that are not {objectives} non-negative numbers summing to 1")
    scale = _number(decision.scale)
    if scale is None or not (np.isfinite(scale) and scale >= 0):
        raise _broken("weighting", kind, f"the reward scale {decision.scale!r}")
    return WeightDecision(np.asarray(decision.weights, dtype=np.float64), scale)


def _number(value: object) -> float | None:
    """`value` as a float, None when it is not a real number (a string, an array)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer
                                                 | np.floating):
        return None
    return float(value)


def checked_probabilities(probabilities: object, distributions: int,
                          kind: str) -> np.ndarray:
    if not _distribution(probabilities, distributions):
        raise _broken("sampler", kind, f"probabilities {np.asarray(probabilities)!r} that "
                      f"are not {distributions} non-negative numbers summing to 1")
    return np.asarray(probabilities, dtype=np.float64)


def checked_proposal(proposal: Proposal, size: int, samples: int, distributions: int,
                     kind: str) -> Proposal:
    indices = np.asarray(proposal.indices)
    if indices.shape != (size,) or indices.dtype.kind not in "iu":
        raise _broken("sampler", kind, f"{indices.shape} indices of type {indices.dtype} "
                      f"for a batch of {size}")
    if size and (int(indices.min()) < 0 or int(indices.max()) >= samples):
        raise _broken("sampler", kind, f"indices outside the dataset [0, {samples}) "
                      f"(from {int(indices.min())} to {int(indices.max())})")
    weights = proposal.loss_weights
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != (size,) or weights.dtype.kind not in "fiu" \
                or not bool(np.all(np.isfinite(weights) & (weights >= 0))):
            raise _broken("sampler", kind, f"loss weights of shape {weights.shape} that "
                          "are not finite and non-negative")
    skipped = proposal.skipped
    if isinstance(skipped, bool) or not isinstance(skipped, int | np.integer) \
            or skipped < 0:
        raise _broken("sampler", kind, f"a skipped count of {skipped!r}")
    probabilities = checked_probabilities(proposal.probabilities, distributions, kind)
    return Proposal(indices.astype(np.int64, copy=False), probabilities,
                    None if weights is None else weights.astype(np.float64, copy=False),
                    int(skipped))
