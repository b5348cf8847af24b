"""Strategy state <-> bytes, without pickle.

A state is a dataclass whose fields are numpy arrays, Python scalars (int, float, bool,
str), nested state dataclasses, or `None` for an optional nested state. It is flattened
to dotted keys and written as an uncompressed, deterministic `.npz` with `allow_pickle=False`, so a
snapshot can be read by any numpy and never executes code. Round trips are exact: arrays
keep dtype and shape, floats keep every bit.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

import numpy as np

from paceline_server.domain.errors import StateCorrupt
from paceline_server.domain.npz import load_npz, save_npz

T = TypeVar("T")
_NONE_MARK = "__none__"


def encode_state(state: Any) -> bytes:
    """Serialise a state dataclass to `.npz` bytes."""
    arrays: dict[str, np.ndarray] = {}
    _flatten(state, "", arrays)
    return save_npz(arrays)


def decode_state(cls: type[T], data: bytes) -> T:
    """Rebuild a state of dataclass type `cls` from `encode_state` bytes."""
    arrays = load_npz(data, "state bytes")
    return _build(cls, "", arrays)


def state_nbytes(state: Any) -> int:
    """Bytes held by the arrays of a state (its in-memory footprint)."""
    arrays: dict[str, np.ndarray] = {}
    _flatten(state, "", arrays)
    return sum(a.nbytes for a in arrays.values())


def _flatten(value: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        raise TypeError(f"state at {prefix or '<root>'} must be a dataclass instance")
    for f in dataclasses.fields(value):
        key = f"{prefix}{f.name}"
        item = getattr(value, f.name)
        if item is None:
            out[key + "." + _NONE_MARK] = np.zeros(0, dtype=np.uint8)
        elif dataclasses.is_dataclass(item):
            _flatten(item, key + ".", out)
        elif isinstance(item, np.ndarray):
            if item.dtype.kind == "O":
                raise TypeError(f"state field {key} has dtype object; not serialisable")
            out[key] = item
        elif isinstance(item, bool | int | float | str | np.generic):
            out[key] = np.asarray(item)
        else:
            raise TypeError(f"state field {key} has unsupported type {type(item).__name__}")


def _build(cls: type, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if key + "." + _NONE_MARK in arrays:
            kwargs[f.name] = None
            continue
        if f.default is None and key not in arrays and not any(
                k.startswith(key + ".") for k in arrays):
            kwargs[f.name] = None  # an optional field added after these bytes were written
            continue
        target = _strip_optional(hint)
        if isinstance(target, type) and dataclasses.is_dataclass(target):
            kwargs[f.name] = _build(target, key + ".", arrays)
            continue
        if key not in arrays:
            raise StateCorrupt(f"state is missing field {key!r}")
        array = arrays[key]
        if target is np.ndarray:
            kwargs[f.name] = array
        elif target in (bool, int, float, str):
            if array.ndim != 0:
                raise StateCorrupt(f"state field {key!r} should be a scalar")
            kwargs[f.name] = target(array.item())
        else:
            raise StateCorrupt(f"state field {key!r} has unsupported type {hint!r}")
    return cls(**kwargs)


def _strip_optional(hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    if origin is not None and origin is not Union and isinstance(origin, type):
        return origin  # e.g. np.ndarray[Any, ...]
    return hint
