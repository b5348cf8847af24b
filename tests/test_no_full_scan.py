"""Per-sample proposal must cost O(B log N), never O(N): every element the sampler reads
from its arrays is counted and must stay far below N."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paceline_server.engine import CurriculumEngine
from support import report, spec


class Counted(np.ndarray):
    """An ndarray that counts the elements read through gathers, ufuncs and numpy
    functions (views such as slices and reshapes are free, as they are in numpy)."""

    touched: ClassVar[int] = 0

    def __getitem__(self, key: Any) -> Any:
        result = super().__getitem__(key)
        if isinstance(result, np.ndarray) and not np.may_share_memory(
                np.asarray(result), np.asarray(self)):
            Counted.touched += result.size
        elif not isinstance(result, np.ndarray):
            Counted.touched += 1
        return result

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        Counted.touched += sum(x.size for x in inputs if isinstance(x, Counted))
        plain = [np.asarray(x) if isinstance(x, Counted) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(x) for x in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        def plain(value: Any) -> Any:
            return np.asarray(value) if isinstance(value, Counted) else value

        if func is np.take:
            result = func(*[plain(a) for a in args], **kwargs)
            Counted.touched += result.size
            return result
        if func not in (np.reshape, np.shape, np.ndim):
            Counted.touched += sum(a.size for a in args if isinstance(a, Counted))
        return func(*[plain(a) for a in args], **{k: plain(v) for k, v in kwargs.items()})


def test_prioritized_propose_touches_far_fewer_than_n_entries() -> None:
    n = 1_000_000
    cur = spec((n // 2, n // 2), sampler="prioritized", batch_size=256)
    engine = CurriculumEngine(cur)
    rng = np.random.default_rng(0)
    engine.apply(report(cur, rng.choice(n, 256, replace=False), np.ones((256, 4))))
    tree = engine.state.sampler.tree
    tree.leaves = tree.leaves.view(Counted)
    tree.nodes = tree.nodes.view(Counted)
    posteriors = engine.state.posteriors
    assert posteriors is not None
    for name in ("alpha", "beta", "last_seen"):
        setattr(posteriors, name, getattr(posteriors, name).view(Counted))
    Counted.touched = 0
    batch = engine.next_batch("r", 1, 256)
    assert np.unique(batch.indices).size == 256
    # 256 draws x 6 levels x 16 children x 2 channels ~ 50k, plus the root: << N.
    assert 0 < Counted.touched < n // 10
    # A full scan would be caught: summing the leaves touches all of them.
    Counted.touched = 0
    np.sum(tree.leaves)
    assert Counted.touched >= n
