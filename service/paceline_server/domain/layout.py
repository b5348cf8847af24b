"""Dataset layout: how global sample indices 0..N-1 group into named distributions.

Two forms: contiguous ranges in order (`sizes`), which need no per-index memory, or a
per-index label array, which keeps one small integer per index plus an index permutation
so that drawing uniformly inside a distribution stays O(draws).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from paceline_server.domain.errors import IndexOutOfRange, InvalidSpec
from paceline_server.domain.validation import (
    check_int,
    check_name,
    check_unique,
    number_array,
)

MAX_SAMPLES = 2**31 - 1


@dataclass(frozen=True, eq=False)
class DatasetLayout:
    """Named distributions over indices 0..N-1.

    Build with `from_sizes` or `from_labels`; both validate. `labels` is None for the
    contiguous form.
    """

    names: tuple[str, ...]
    sizes: np.ndarray  # int64 [D]
    labels: np.ndarray | None = None  # smallest unsigned int dtype [N], or None
    _offsets: np.ndarray = field(init=False, repr=False)  # int64 [D + 1]
    _members: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        offsets = np.zeros(len(self.sizes) + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=offsets[1:])
        object.__setattr__(self, "_offsets", offsets)
        if self.labels is not None:
            # Stable sort keeps members of each distribution in increasing index order.
            members = np.argsort(self.labels, kind="stable").astype(
                np.int32 if self.labels.size <= np.iinfo(np.int32).max else np.int64
            )
            object.__setattr__(self, "_members", members)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_sizes(cls, distributions: Sequence[tuple[str, int]]) -> DatasetLayout:
        if not distributions:
            raise InvalidSpec("layout needs at least one distribution", {"field": "layout"})
        names = tuple(check_name(n, "distribution name", InvalidSpec) for n, _ in distributions)
        check_unique(names, "distribution", InvalidSpec)
        sizes = np.array(
            [check_int(s, f"size of distribution {n!r}", InvalidSpec, minimum=1,
                       maximum=MAX_SAMPLES) for n, s in distributions],
            dtype=np.int64,
        )
        if int(sizes.sum()) > MAX_SAMPLES:
            raise InvalidSpec(f"layout holds more than {MAX_SAMPLES} samples", {"field": "layout"})
        return cls(names=names, sizes=sizes)

    @classmethod
    def from_labels(cls, labels: Sequence[int] | np.ndarray, names: Sequence[str]) -> DatasetLayout:
        names_t = tuple(check_name(n, "distribution name", InvalidSpec) for n in names)
        if not names_t:
            raise InvalidSpec("layout needs at least one distribution", {"field": "layout"})
        check_unique(names_t, "distribution", InvalidSpec)
        raw = number_array(labels, "labels", InvalidSpec, of="integers")
        if raw.ndim != 1 or raw.size == 0:
            raise InvalidSpec("labels must be a non-empty list of integers", {"field": "labels"})
        if raw.size > MAX_SAMPLES:
            raise InvalidSpec(f"layout holds more than {MAX_SAMPLES} samples", {"field": "labels"})
        if raw.dtype.kind not in "iu":
            raise InvalidSpec("labels must be integers (distribution positions)",
                              {"field": "labels"})
        if raw.min() < 0 or raw.max() >= len(names_t):
            raise InvalidSpec(
                f"labels must lie in [0, {len(names_t) - 1}] (one per distribution name)",
                {"field": "labels"},
            )
        sizes = np.bincount(raw, minlength=len(names_t)).astype(np.int64)
        empty = [names_t[d] for d in np.flatnonzero(sizes == 0)]
        if empty:
            raise InvalidSpec(f"distributions without samples: {empty}",
                              {"field": "labels", "empty": empty})
        count = len(names_t)
        dtype = np.uint8 if count <= 256 else np.uint16 if count <= 65536 else np.uint32
        return cls(names=names_t, sizes=sizes, labels=raw.astype(dtype))

    # ----------------------------------------------------------------- queries
    @property
    def num_samples(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_distributions(self) -> int:
        return len(self.names)

    @property
    def is_contiguous(self) -> bool:
        return self.labels is None

    def index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError as exc:
            raise InvalidSpec(f"unknown distribution {name!r}", {"distribution": name}) from exc

    def check_indices(self, indices: np.ndarray) -> None:
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):
            bad = indices[(indices < 0) | (indices >= self.num_samples)]
            raise IndexOutOfRange(
                f"sample indices must lie in [0, {self.num_samples - 1}]; "
                f"got {bad[:5].tolist()}",
                {"num_samples": self.num_samples, "bad": bad[:20].tolist()},
            )

    def distribution_of(self, indices: np.ndarray) -> np.ndarray:
        """Distribution position (int64) of each index; indices must be in range."""
        if self.labels is not None:
            return self.labels[indices].astype(np.int64)
        return np.searchsorted(self._offsets, indices, side="right").astype(np.int64) - 1

    def members(self, d: int, positions: np.ndarray) -> np.ndarray:
        """Global indices of the members at `positions` (0..n_d-1) of distribution d."""
        start = self._offsets[d]
        if self._members is None:
            return positions.astype(np.int64) + start
        # Members are sorted by label, so distribution d's members start at offsets[d] too.
        return self._members[start + positions].astype(np.int64)

    def draw(self, d: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` indices uniformly from distribution d, without replacement when it is
        large enough, with replacement otherwise."""
        size = int(self.sizes[d])
        positions = rng.choice(size, size=count, replace=count > size)
        return self.members(d, np.asarray(positions, dtype=np.int64))

    def state_bytes(self) -> int:
        """Memory held per layout (labels + member permutation)."""
        total = self.sizes.nbytes + self._offsets.nbytes
        if self.labels is not None and self._members is not None:
            total += self.labels.nbytes + self._members.nbytes
        return total

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, object]:
        if self.labels is None:
            return {"distributions": [{"name": n, "size": int(s)}
                                      for n, s in zip(self.names, self.sizes, strict=True)]}
        return {"names": list(self.names), "labels": self.labels.tolist()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DatasetLayout):
            return NotImplemented
        if self.names != other.names or not np.array_equal(self.sizes, other.sizes):
            return False
        if self.labels is None or other.labels is None:
            return self.labels is None and other.labels is None
        return np.array_equal(self.labels, other.labels)

    def __hash__(self) -> int:
        return hash((self.names, self.sizes.tobytes()))
