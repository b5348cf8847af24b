"""State <-> bytes without pickle: exact round trips and clear failures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from paceline_server.domain import StateCorrupt
from paceline_server.strategies.state_codec import decode_state, encode_state, state_nbytes


@dataclass
class Inner:
    values: np.ndarray
    count: int


@dataclass
class Outer:
    weights: np.ndarray
    scale: float
    name: str
    flag: bool
    inner: Inner
    optional: Inner | None


def sample() -> Outer:
    return Outer(weights=np.array([0.1, 0.2, 0.7], dtype=np.float32), scale=1 / 3,
                 name="x", flag=True, inner=Inner(np.arange(4, dtype=np.int32), 7),
                 optional=None)


def test_round_trip_keeps_dtype_shape_and_bits() -> None:
    state = sample()
    back = decode_state(Outer, encode_state(state))
    assert back.weights.dtype == np.float32
    assert back.weights.tobytes() == state.weights.tobytes()
    assert back.scale == state.scale and type(back.scale) is float
    assert back.name == "x" and back.flag is True
    assert back.inner.count == 7 and back.inner.values.dtype == np.int32
    assert back.optional is None


def test_optional_present() -> None:
    state = sample()
    state.optional = Inner(np.zeros((2, 3)), 1)
    back = decode_state(Outer, encode_state(state))
    assert back.optional is not None and back.optional.values.shape == (2, 3)


def test_nbytes_counts_arrays() -> None:
    # Arrays only: 3 float32 weights + 4 int32 values; scalars are not per-sample memory
    # but are stored as 0-d arrays (scale 8 B, count 8 B, flag 1 B, name 4 B).
    assert state_nbytes(sample()) == 3 * 4 + 4 * 4 + 8 + 8 + 1 + 4


def test_object_arrays_are_refused() -> None:
    state = sample()
    state.weights = np.array([object()], dtype=object)
    with pytest.raises(TypeError, match="dtype object"):
        encode_state(state)


def test_missing_field_and_garbage() -> None:
    data = encode_state(Inner(np.zeros(2), 1))
    with pytest.raises(StateCorrupt, match="missing field"):
        decode_state(Outer, data)
    with pytest.raises(StateCorrupt):
        decode_state(Inner, b"garbage")


@given(hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.int64, np.uint8]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
       st.floats(allow_nan=False), st.integers(-(2**62), 2**62))
def test_any_array_round_trips(array: np.ndarray, scale: float, count: int) -> None:
    state = Outer(weights=array, scale=scale, name="n", flag=False,
                  inner=Inner(array, count), optional=None)
    back = decode_state(Outer, encode_state(state))
    assert back.weights.dtype == array.dtype and back.weights.shape == array.shape
    assert back.weights.tobytes() == array.tobytes()
    assert back.scale == scale and back.inner.count == count
