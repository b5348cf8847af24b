"""A report: what happened on the rollouts of one training step.

Canonical form is flat: one row per rollout, `group_of` saying which reported index
(group) each row belongs to. The dense `[n, g, k]` form and the flat form with group ids
both convert to it, so strategies handle ragged groups without padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paceline_server.domain.errors import InvalidReport
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.validation import (
    MAX_GRAD_PRODUCT,
    MAX_INT,
    MAX_VALUE,
    check_bounded,
    check_identifier,
    number_array,
)

MAX_ROLLOUTS = 10_000_000


def _array(value: object, what: str, dtype: type, ndim: int | None) -> np.ndarray:
    array: np.ndarray = number_array(value, what, InvalidReport, booleans=True).astype(
        dtype, copy=False)
    if ndim is not None and array.ndim != ndim:
        raise InvalidReport(f"{what} must have {ndim} dimension(s); got shape {array.shape}",
                            {"field": what, "shape": list(array.shape)})
    return array


def _indices(value: object, what: str) -> np.ndarray:
    raw = number_array(value, what, InvalidReport, of="integers")
    if raw.ndim != 1:
        raise InvalidReport(f"{what} must be a 1-D list of integers; got shape {raw.shape}",
                            {"field": what})
    if raw.size and raw.dtype.kind not in "iu":
        if (raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))
                and np.all(np.abs(raw) < 2.0**63)):  # what int64 holds (1e30 wrapped)
            raw = raw.astype(np.int64)
        else:
            raise InvalidReport(f"{what} must be integers", {"field": what})
    if raw.dtype == np.uint64 and raw.size and int(raw.max()) > np.iinfo(np.int64).max:
        raise InvalidReport(f"{what} out of range", {"field": what})
    return raw.astype(np.int64)


def _finite(array: np.ndarray, what: str, limit: float = MAX_VALUE) -> None:
    """Finite and bounded (`MAX_VALUE`): what a strategy folds must keep its state
    finite, and a report is the one place such numbers enter."""
    check_bounded(array, what, InvalidReport, limit=limit)


@dataclass(frozen=True, eq=False)
class Report:
    """One step's rollouts. Build with `dense` or `flat`; both validate against a layout
    and the number of objectives (use `validate` for a hand-built instance)."""

    run_id: str
    step: int
    indices: np.ndarray  # int64 [n]: one sample index per group
    group_of: np.ndarray  # int64 [m]: group (position in `indices`) of each rollout, sorted
    rewards: np.ndarray  # float64 [m, k]
    advantages: np.ndarray | None = None  # float64 [m]
    grad_products: np.ndarray | None = None  # float64 [k, k]
    eval_objectives: np.ndarray | None = None  # float64 [k]

    @property
    def num_groups(self) -> int:
        return int(self.indices.shape[0])

    @property
    def num_rollouts(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_objectives(self) -> int:
        return int(self.rewards.shape[1])

    # ----------------------------------------------------------------- construction
    @classmethod
    def dense(cls, *, run_id: str, step: int, indices: object, rewards: object,
              advantages: object | None = None, grad_products: object | None = None,
              eval_objectives: object | None = None, layout: DatasetLayout,
              num_objectives: int) -> Report:
        """Rewards `[n, g, k]` (or `[n, g]` with one objective), advantages `[n, g]`."""
        idx = _indices(indices, "indices")
        rew = _array(rewards, "rewards", np.float64, None)
        if rew.ndim == 2 and num_objectives == 1:
            rew = rew[..., None]
        if rew.ndim != 3:
            raise InvalidReport(f"rewards must have shape [n, g, k]; got {list(rew.shape)}",
                                {"field": "rewards", "shape": list(rew.shape)})
        n, g, k = rew.shape
        if n != idx.shape[0]:
            raise InvalidReport(f"rewards has {n} groups but indices has {idx.shape[0]}",
                                {"field": "rewards", "shape": [n, g, k]})
        adv = None
        if advantages is not None:
            adv = _array(advantages, "advantages", np.float64, 2)
            if adv.shape != (n, g):
                raise InvalidReport(f"advantages must have shape [{n}, {g}]; got {list(adv.shape)}",
                                    {"field": "advantages", "shape": list(adv.shape)})
            adv = adv.reshape(n * g)
        report = cls(run_id=run_id, step=step, indices=idx,
                     group_of=np.repeat(np.arange(n, dtype=np.int64), g),
                     rewards=rew.reshape(n * g, k), advantages=adv,
                     grad_products=_optional(grad_products, "grad_products", 2),
                     eval_objectives=_optional(eval_objectives, "eval_objectives", 1))
        report.validate(layout, num_objectives)
        return report

    @classmethod
    def flat(cls, *, run_id: str, step: int, rollout_indices: object, rewards: object,
             group_ids: object | None = None, advantages: object | None = None,
             grad_products: object | None = None, eval_objectives: object | None = None,
             layout: DatasetLayout, num_objectives: int) -> Report:
        """One row per rollout: its sample index, rewards `[m, k]`, optional group id
        (defaults to the sample index) and advantage `[m]`."""
        rows = _indices(rollout_indices, "rollout_indices")
        rew = _array(rewards, "rewards", np.float64, None)
        if rew.ndim == 1 and num_objectives == 1:
            rew = rew[:, None]
        if rew.ndim != 2:
            raise InvalidReport(f"flat rewards must have shape [m, k]; got {list(rew.shape)}",
                                {"field": "rewards", "shape": list(rew.shape)})
        m = rows.shape[0]
        if rew.shape[0] != m:
            raise InvalidReport(f"rewards has {rew.shape[0]} rows but rollout_indices has {m}",
                                {"field": "rewards"})
        gids = rows if group_ids is None else _indices(group_ids, "group_ids")
        if gids.shape[0] != m:
            raise InvalidReport(f"group_ids has {gids.shape[0]} rows; expected {m}",
                                {"field": "group_ids"})
        adv = None
        if advantages is not None:
            adv = _array(advantages, "advantages", np.float64, 1)
            if adv.shape[0] != m:
                raise InvalidReport(f"advantages has {adv.shape[0]} rows; expected {m}",
                                    {"field": "advantages"})
        if m == 0:
            raise InvalidReport("a report needs at least one rollout", {"field": "rewards"})
        # Stable sort by group id; the group keeps first-appearance order of its ids.
        _, first, inverse = np.unique(gids, return_index=True, return_inverse=True)
        order_of_group = np.argsort(first, kind="stable")
        rank = np.empty_like(order_of_group)
        rank[order_of_group] = np.arange(order_of_group.size)
        group_of = rank[inverse]
        perm = np.argsort(group_of, kind="stable")
        group_of = group_of[perm]
        rows_sorted = rows[perm]
        starts = np.flatnonzero(np.r_[True, group_of[1:] != group_of[:-1]])
        indices = rows_sorted[starts]
        # Every row of a group must name the same sample index.
        if np.any(rows_sorted != indices[group_of]):
            raise InvalidReport("rows of one group name different sample indices",
                                {"field": "group_ids"})
        report = cls(run_id=run_id, step=step, indices=indices, group_of=group_of,
                     rewards=rew[perm], advantages=None if adv is None else adv[perm],
                     grad_products=_optional(grad_products, "grad_products", 2),
                     eval_objectives=_optional(eval_objectives, "eval_objectives", 1))
        report.validate(layout, num_objectives)
        return report

    # ----------------------------------------------------------------- validation
    def validate(self, layout: DatasetLayout, num_objectives: int) -> None:
        """Raise InvalidReport unless the report is consistent and finite."""
        check_identifier(self.run_id, "run_id", InvalidReport)
        if isinstance(self.step, bool) or not isinstance(self.step, int | np.integer) \
                or not 0 <= self.step <= MAX_INT:
            raise InvalidReport(f"step must be an integer in [0, {MAX_INT}]; got {self.step!r}",
                                {"field": "step"})
        n = self.indices.shape[0]
        if n == 0:
            raise InvalidReport("a report needs at least one sample index", {"field": "indices"})
        if self.rewards.ndim != 2 or self.rewards.shape[1] != num_objectives:
            got = self.rewards.shape[-1] if self.rewards.ndim else 0
            raise InvalidReport(
                f"rewards must have one column per objective ({num_objectives}); got {got}",
                {"field": "rewards", "expected_objectives": num_objectives},
            )
        m = self.rewards.shape[0]
        if m > MAX_ROLLOUTS:
            raise InvalidReport(f"at most {MAX_ROLLOUTS} rollouts per report",
                                {"field": "rewards"})
        if self.group_of.shape != (m,):
            raise InvalidReport("group_of must have one entry per rollout", {"field": "group_of"})
        steps = np.diff(self.group_of)
        if m == 0 or self.group_of[0] != 0 or self.group_of[-1] != n - 1 \
                or (steps.size and (steps.min() < 0 or steps.max() > 1)):
            raise InvalidReport("every reported index needs at least one rollout",
                                {"field": "rewards"})
        layout.check_indices(self.indices)
        _finite(self.rewards, "rewards")
        if self.advantages is not None:
            if self.advantages.shape != (m,):
                raise InvalidReport("advantages must have one value per rollout",
                                    {"field": "advantages"})
            _finite(self.advantages, "advantages")
        if self.grad_products is not None:
            if self.grad_products.shape != (num_objectives, num_objectives):
                raise InvalidReport(
                    f"grad_products must be a {num_objectives}x{num_objectives} matrix; "
                    f"got shape {list(self.grad_products.shape)}",
                    {"field": "grad_products"},
                )
            _finite(self.grad_products, "grad_products", MAX_GRAD_PRODUCT)
            _symmetric(self.grad_products, "grad_products")
        if self.eval_objectives is not None:
            if self.eval_objectives.shape != (num_objectives,):
                raise InvalidReport(
                    f"eval_objectives must have one value per objective ({num_objectives})",
                    {"field": "eval_objectives"},
                )
            _finite(self.eval_objectives, "eval_objectives")


def _symmetric(matrix: np.ndarray, what: str) -> None:
    """A Gram matrix [<g_i, g_j>] is symmetric; allow the rounding of products computed
    one by one (a relative 1e-6 of the largest entry), nothing more."""
    with np.errstate(over="ignore", invalid="ignore"):
        largest = float(np.abs(matrix).max()) if matrix.size else 0.0
        asymmetry = float(np.abs(matrix - matrix.T).max()) if matrix.size else 0.0
    if not asymmetry <= 1e-6 * largest:
        raise InvalidReport(f"{what} must be symmetric (a Gram matrix of inner products); "
                            f"largest |G_ij - G_ji| is {asymmetry:.3g}", {"field": what})


def _optional(value: object | None, what: str, ndim: int) -> np.ndarray | None:
    return None if value is None else _array(value, what, np.float64, ndim)
