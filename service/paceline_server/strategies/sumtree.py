"""A multi-channel sum-tree for per-sample sampling at 10^7 samples.

Leaves are float32 channel planes `[C, N]` (C channels, combined at sampling time with
coefficients, so that a priority of the form A - c(t)·B never needs all N leaves
rewritten as t moves).
Above them a 16-ary tree of float64 sums (about N/15 nodes: ~0.5 byte per sample per
channel) keeps the height at log16 N, so every operation is a handful of vector ops.

Costs: building O(N); `set_leaves` O(k log N) (touched nodes are *recomputed from their
children*, never adjusted by deltas, so rounding cannot drift); `sample_unique` O(B log N)
with all draws of a round descending together (vectorised), then duplicates are redrawn
with the chosen leaves temporarily zeroed and restored bit-exactly afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FANOUT = 16
MAX_ROUNDS = 64
_PREFIX = np.triu(np.ones((FANOUT, FANOUT)))  # w @ _PREFIX = running sums along a row


@dataclass
class SumTreeState:
    size: int  # number of real leaves N
    leaves: np.ndarray  # float32 [C, N rounded up to a multiple of 16]; padding is 0
    nodes: np.ndarray  # float64 [C, M]: every internal level, root first (see `_layout`)


@functools.lru_cache(maxsize=64)
def _layout(size: int) -> tuple[tuple[int, int], ...]:
    """(offset, rows) of each internal level in `nodes`, root first. Every level below
    the root is padded to a multiple of 16 rows, so the children of node i are row i of
    each channel plane of the level below viewed as [-1, 16]: one contiguous gather per
    channel and level (channel-major planes make this ~4x faster than [N, C] rows). A 16-ary
    tree keeps the height at log16 N (6 levels at 10^7)."""
    rows = []
    count = _padded(size)
    while count > 1:
        count = count // FANOUT
        rows.append(_padded(count) if count > 1 else 1)
        count = rows[-1]
    if not rows:
        rows.append(1)
    rows.reverse()
    offsets = np.cumsum([0, *rows[:-1]]).tolist()
    return tuple(zip(offsets, rows, strict=True))  # cached: computed once per size


def tree_bytes(size: int, channels: int = 1) -> int:
    """Bytes of `build_tree` over `size` leaves of `channels` channels, without building
    it (float32 leaves, float64 internal levels): the per-sample samplers' memory
    estimate."""
    return channels * (4 * _padded(size) + 8 * sum(rows for _, rows in _layout(size)))


def _padded(count: int) -> int:
    return max(FANOUT, -(-count // FANOUT) * FANOUT)


def _children_sums(children: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Float64 sums of the 16 children of each parent. One reduction along the last
    axis sums the 16 children of every parent independently of the others, so a recomputed
    node has exactly the bits of a freshly built one (tested)."""
    return np.stack([
        np.add.reduce(np.take(plane.reshape(-1, FANOUT), parents, axis=0)
                      .astype(np.float64), axis=1)
        for plane in children])


def _level(tree: SumTreeState, depth: int,
           layout: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The array at `depth` (0 = root level); the level below the last is the leaves."""
    if depth == len(layout):
        return tree.leaves
    offset, rows = layout[depth]
    return tree.nodes[:, offset:offset + rows]


def build_tree(values: np.ndarray) -> SumTreeState:
    raw = np.asarray(values, dtype=np.float32)
    if raw.ndim == 1:
        raw = raw[:, None]
    size = raw.shape[0]
    leaves = np.zeros((raw.shape[1], _padded(size)), dtype=np.float32)
    leaves[:, :size] = raw.T
    layout = _layout(size)
    nodes = np.zeros((raw.shape[1], sum(rows for _, rows in layout)))
    tree = SumTreeState(size=size, leaves=leaves, nodes=nodes)
    for depth in range(len(layout) - 1, -1, -1):
        below = _level(tree, depth + 1, layout)
        offset = layout[depth][0]
        parents = np.arange(below.shape[1] // FANOUT)
        nodes[:, offset:offset + parents.size] = _children_sums(below, parents)
    return tree


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if values.size else values


def _refresh(tree: SumTreeState, leaf_indices: np.ndarray) -> None:
    """Recompute every ancestor of the given leaves from its children."""
    layout = _layout(tree.size)
    parents = _sorted_unique(leaf_indices // FANOUT)
    for depth in range(len(layout) - 1, -1, -1):
        below = _level(tree, depth + 1, layout)
        tree.nodes[:, layout[depth][0] + parents] = _children_sums(below, parents)
        parents = _sorted_unique(parents // FANOUT)


def set_leaves(tree: SumTreeState, indices: np.ndarray, values: np.ndarray) -> None:
    """Write leaf values in place (duplicate indices: the last one wins)."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        values = values[:, None]
    # Keep only the last occurrence of each index, so "last wins" is guaranteed.
    reversed_unique, first_in_reversed = np.unique(indices[::-1], return_index=True)
    last = indices.size - 1 - first_in_reversed
    tree.leaves[:, reversed_unique] = values[last].T
    _refresh(tree, reversed_unique)


def channel_totals(tree: SumTreeState) -> np.ndarray:
    return tree.nodes[:, 0].copy()


def total_weight(tree: SumTreeState, coef: np.ndarray | None = None) -> float:
    coef = _coef(tree, coef)
    return max(0.0, float(coef @ tree.nodes[:, 0]))


def leaf_weights(tree: SumTreeState, indices: np.ndarray,
                 coef: np.ndarray | None = None) -> np.ndarray:
    coef = _coef(tree, coef)
    return np.maximum(coef @ np.take(tree.leaves, indices, axis=1).astype(np.float64), 0.0)


def _coef(tree: SumTreeState, coef: np.ndarray | None) -> np.ndarray:
    if coef is None:
        return np.ones(tree.leaves.shape[0])
    return np.asarray(coef, dtype=np.float64)


def _descend(tree: SumTreeState, count: int, rng: np.random.Generator,
             coef: np.ndarray) -> np.ndarray:
    """`count` independent draws ∝ max(0, leaf·coef), all descending together."""
    return descend(tree, rng.random(count) * total_weight(tree, coef), coef)


def prefix_sums(tree: SumTreeState, positions: np.ndarray,
                coef: np.ndarray | None = None) -> np.ndarray:
    """Σ max(0, leaf·coef) over leaves [0, p) for each p in 0..size: O(log N) per
    position (the left siblings' sums on the path to the root). With these, a draw
    restricted to leaves [lo, hi) is `descend` at u in [prefix(lo), prefix(hi))."""
    coef = _coef(tree, coef)
    layout = _layout(tree.size)
    p = np.asarray(positions, dtype=np.int64).copy()
    out = np.zeros(p.size)
    whole = p >= tree.size
    p[whole] = 0
    mask_cols = np.arange(FANOUT)
    for depth in range(len(layout), 0, -1):
        below = _level(tree, depth, layout)
        rows = p // FANOUT
        before = mask_cols[None, :] < (p % FANOUT)[:, None]
        weights = np.zeros((p.size, FANOUT))
        for i, c in enumerate(coef):
            if c != 0.0:
                weights += float(c) * np.take(below[i].reshape(-1, FANOUT), rows,
                                              axis=0).astype(np.float64)
        out += np.where(before, np.maximum(weights, 0.0), 0.0).sum(axis=1)
        p = rows
    out[whole] = total_weight(tree, coef)
    return out


#: Descents per block of `descend`: its [k, 16] x [16, 16] product goes multi-threaded
#: in OpenBLAS from about 2 000 rows, which on a busy machine cost 7-50x (measured at
#: N = 10^7: 2 048 descents 7.6 ms of CPU in one product, 2 x 1.0 ms in two).
DESCENT_CHUNK = 1024


def descend(tree: SumTreeState, u: np.ndarray, coef: np.ndarray | None = None,
            siblings: np.ndarray | None = None) -> np.ndarray:
    """The leaf at cumulative weight `u` for each u (all descending together, in blocks
    of `DESCENT_CHUNK`); u is clipped into the tree's mass, so a leaf with weight is
    always returned while the tree has any.

    `siblings` (uniform [0, 1) values, shape [len(u), k]) asks for k more leaves per
    descent, drawn ∝ weight among the 16 leaves of the block the descent reached: each
    is still marginally a draw ∝ weight over the whole range (the block was reached ∝ its
    mass), for one descent instead of k + 1. Returns [len(u), k + 1] leaves then."""
    coef = _coef(tree, coef)
    u = np.asarray(u, dtype=np.float64)
    if u.size <= DESCENT_CHUNK:
        return _descend_block(tree, u, coef, siblings)
    extra = None if siblings is None else np.asarray(siblings)
    return np.concatenate([
        _descend_block(tree, u[i:i + DESCENT_CHUNK], coef,
                       None if extra is None else extra[i:i + DESCENT_CHUNK])
        for i in range(0, u.size, DESCENT_CHUNK)])


def _descend_block(tree: SumTreeState, u: np.ndarray, coef: np.ndarray,
                   siblings: np.ndarray | None) -> np.ndarray:
    layout = _layout(tree.size)
    u = u.copy()
    count = u.size
    node = np.zeros(count, dtype=np.int64)
    rows = np.arange(count)
    channels = [(float(c), i) for i, c in enumerate(coef) if c != 0.0]
    for depth in range(1, len(layout) + 1):
        below = _level(tree, depth, layout)
        weights = np.zeros((count, FANOUT))
        for c, i in channels:
            weights += c * np.take(below[i].reshape(-1, FANOUT), node, axis=0)
        np.maximum(weights, 0.0, out=weights)
        cumulative = weights @ _PREFIX  # a 16x16 triangular product beats cumsum here
        # Keep u strictly inside the node's mass, so rounding can never pick a child
        # without weight (its cumulative sum would equal the previous one).
        u = np.minimum(u, np.nextafter(cumulative[:, -1], 0.0))
        pick = (cumulative <= u[:, None]).sum(axis=1)
        before = cumulative[rows, pick] - weights[rows, pick]
        u = np.maximum(u - before, 0.0)
        if siblings is not None and depth == len(layout):
            extra = np.asarray(siblings) * cumulative[:, -1:]
            more = (cumulative[:, None, :] <= extra[:, :, None]).sum(axis=2)
            more = np.minimum(more, FANOUT - 1)
            return np.concatenate([(node * FANOUT + pick)[:, None], node[:, None] * FANOUT
                                   + more], axis=1)
        node = node * FANOUT + pick
    return node


def sample_filtered(tree: SumTreeState, count: int, rng: np.random.Generator,
                    coef: np.ndarray | None = None,
                    accept: Callable[[np.ndarray], np.ndarray] | None = None,
                    max_redraws: int = 0) -> tuple[np.ndarray, int]:
    """`count` distinct leaves ∝ weight, and how many were rejected by `accept`.

    Sampling without replacement in rounds: draw the missing number of leaves from the
    whole tree, keep the new distinct ones, and redraw the rest; a draw that hits an
    already chosen (or rejected) leaf is simply discarded, which is exactly a draw from
    the remaining mass. Only when that keeps failing (the chosen leaves hold most of the
    mass) are they zeroed in the tree, to be restored bit-exactly before returning.
    With `accept`, rejected leaves are excluded and redrawn, at most `max_redraws`
    rounds of rejection. When the positive mass runs out, the rest is filled first with
    the rejected leaves (in draw order, so a batch is never starved by skipping: they no
    longer count as skipped), then uniformly among the leaves not chosen. Every loop is
    bounded: `MAX_ROUNDS` tree rounds and a bounded uniform fill.
    """
    coef = _coef(tree, coef)
    n = tree.size
    count = min(count, n)
    chosen = np.zeros(0, dtype=np.int64)
    excluded = np.zeros(0, dtype=np.int64)  # chosen or rejected
    rejected = np.zeros(0, dtype=np.int64)
    zeroed: list[np.ndarray] = []
    saved: list[np.ndarray] = []
    skipped = 0
    rejection_rounds = 0
    misses = 0
    try:
        for _ in range(MAX_ROUNDS):
            need = count - chosen.size
            if need == 0 or total_weight(tree, coef) <= 0:
                break
            draws = _descend(tree, need, rng, coef)
            _, first = np.unique(draws, return_index=True)
            fresh = draws[np.sort(first)]
            fresh = fresh[~np.isin(fresh, excluded)]
            fresh = fresh[leaf_weights(tree, fresh, coef) > 0]
            if accept is not None and rejection_rounds < max_redraws and fresh.size:
                ok = np.asarray(accept(fresh), dtype=bool)
                if not ok.all():
                    rejection_rounds += 1
                    skipped += int((~ok).sum())
                    excluded = np.concatenate([excluded, fresh[~ok]])
                    rejected = np.concatenate([rejected, fresh[~ok]])
                    fresh = fresh[ok]
            chosen = np.concatenate([chosen, fresh])
            excluded = np.concatenate([excluded, fresh])
            # Under half of the missing leaves found (none, when one is missing).
            misses = misses + 1 if 2 * fresh.size < need else 0
            if misses >= 2:
                # The excluded leaves hold most of the mass: take them out of the tree.
                pending = np.setdiff1d(excluded, np.concatenate(zeroed) if zeroed else [])
                zeroed.append(pending)
                saved.append(tree.leaves[:, pending].T.copy())
                set_leaves(tree, pending, np.zeros((pending.size, tree.leaves.shape[0])))
                misses = 0
        if chosen.size < count and rejected.size:
            # Skipping may shorten a batch's choice, never its size: take back the
            # rejected leaves that are needed.
            back = rejected[: count - chosen.size]
            chosen = np.concatenate([chosen, back])
            skipped -= int(back.size)
        if chosen.size < count:
            chosen = np.concatenate(
                [chosen, uniform_excluding(n, count - chosen.size, chosen, rng)])
    finally:
        if zeroed:
            set_leaves(tree, np.concatenate(zeroed), np.concatenate(saved))
    return chosen[:count].astype(np.int64), skipped


def sample_unique(tree: SumTreeState, count: int, rng: np.random.Generator,
                  coef: np.ndarray | None = None) -> np.ndarray:
    return sample_filtered(tree, count, rng, coef)[0]


def uniform_excluding(n: int, count: int, exclude: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """`count` distinct indices of 0..n-1 not in `exclude`.

    By rejection while most of 0..n-1 is free (O(count): every draw is accepted with
    probability >= 3/8, and the rounds are capped); otherwise, or if the cap is reached,
    from the explicit complement (O(n), only for small or nearly exhausted trees). Raises
    ValueError when fewer than `count` indices are free, instead of looping forever."""
    excluded = np.unique(np.asarray(exclude, dtype=np.int64))
    free = n - excluded.size
    if count > free:
        raise ValueError(f"cannot draw {count} distinct indices: only {free} of {n} free")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if 2 * excluded.size < n and 4 * count < free:
        result = np.zeros(0, dtype=np.int64)
        for _ in range(MAX_ROUNDS):
            draws = rng.integers(0, n, size=2 * (count - result.size) + 8)
            draws = draws[~np.isin(draws, excluded)]
            _, first = np.unique(draws, return_index=True)
            draws = draws[np.sort(first)]  # distinct, in draw order
            draws = draws[~np.isin(draws, result)]
            result = np.concatenate([result, draws[: count - result.size]])
            if result.size == count:
                return result
        rest = _complement_choice(n, count - result.size,
                                  np.union1d(excluded, result), rng)
        return np.concatenate([result, rest])
    return _complement_choice(n, count, excluded, rng)


def _complement_choice(n: int, count: int, excluded: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    pool = np.setdiff1d(np.arange(n, dtype=np.int64), excluded)
    return np.asarray(rng.choice(pool, size=count, replace=False), dtype=np.int64)
