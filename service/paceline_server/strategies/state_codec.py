"""Strategy state <-> bytes, without pickle.

A state is a dataclass whose fields are numpy arrays, Python scalars (int, float, bool,
str), nested state dataclasses, or `None` for an optional nested state. It is flattened
to dotted keys and written as an uncompressed, deterministic `.npz` with `allow_pickle=False`, so a
snapshot can be read by any numpy and never executes code. Round trips are exact: arrays
keep dtype and shape, floats keep every bit.

Versions: a state class may declare `state_version: ClassVar[int]` (1 when it does not).
The version of every dataclass in the tree is written beside its fields under
`__state_version__`; bytes without that key (written before versions existed) read as
version 1. Decoding bytes of another version than the class's calls the `migrate` hook
given for the root (the owning strategy's `migrate_state`) or raises `StateVersionError`,
upon which the app rebuilds the curriculum by replaying its event log (see
`app/engines.py`). A state that nests another class's state bumps its own version when
the nested one changes: only the root's old bytes are handed to the hook.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, Union, get_args, get_origin

import numpy as np

from paceline_server.domain.errors import StateCorrupt
from paceline_server.domain.npz import load_npz, save_npz

T = TypeVar("T")
_NONE_MARK = "__none__"
VERSION_KEY = "__state_version__"
#: Turns the flattened arrays of an older version into those of the class's version.
Migration = Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]]


class StateVersionError(StateCorrupt):
    """State bytes of a version this code cannot read: newer than the code, or older
    with no migration. A StateCorrupt, so callers that do not fall back still refuse."""


def state_version(cls: type) -> int:
    """The schema version a state class declares (`state_version`, default 1)."""
    version = getattr(cls, "state_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TypeError(f"{cls.__name__}.state_version must be an integer >= 1")
    return version


def encode_state(state: Any) -> bytes:
    """Serialise a state dataclass to `.npz` bytes (with its version)."""
    return save_npz(state_arrays(state))


def state_arrays(state: Any) -> dict[str, np.ndarray]:
    """The flattened arrays of a state dataclass (with its versions), not copied: what
    `encode_state` writes, for encoders that stream them instead (snapshots)."""
    arrays: dict[str, np.ndarray] = {}
    _flatten(state, "", arrays)
    return arrays


def decode_state(cls: type[T], data: bytes, migrate: Migration | None = None) -> T:
    """Rebuild a state of dataclass type `cls` from `encode_state` bytes. Bytes of an
    older version go through `migrate(old_version, arrays)` when given; otherwise, or
    when they are newer than `cls`, StateVersionError."""
    return state_from_arrays(cls, load_npz(data, "state bytes"), migrate)


def state_from_arrays(cls: type[T], arrays: dict[str, np.ndarray],
                      migrate: Migration | None = None) -> T:
    """Rebuild a state of dataclass type `cls` from `state_arrays` output (the arrays are
    used as they are, not copied); versions are handled as in `decode_state`."""
    stored, current = stored_version(arrays, ""), state_version(cls)
    if stored != current:
        if stored > current or migrate is None:
            raise _version_error(cls, "", stored, current)
        arrays = migrate(stored, arrays)
        arrays[VERSION_KEY] = np.asarray(current, dtype=np.int64)
    return _build(cls, "", arrays)


def stored_version(arrays: dict[str, np.ndarray], prefix: str = "") -> int:
    """The version written for the dataclass at `prefix` (1 when none was written)."""
    key = prefix + VERSION_KEY
    if key not in arrays:
        return 1
    array = arrays[key]
    if array.ndim != 0 or array.dtype.kind not in "iu" or int(array) < 1:
        raise StateCorrupt(f"state key {key!r} is not a version number", {"field": key})
    return int(array)


def _version_error(cls: type, prefix: str, stored: int, current: int) -> StateVersionError:
    where = f"state field {prefix[:-1]!r}" if prefix else "state"
    how = ("newer than this code" if stored > current
           else "older, and its strategy has no migration for it")
    return StateVersionError(
        f"{where} ({cls.__name__}) was written as version {stored}; this code has version "
        f"{current} ({how})",
        {"state": cls.__name__, "stored_version": stored, "version": current})


def state_nbytes(state: Any) -> int:
    """Bytes held by the arrays of a state (its in-memory footprint)."""
    arrays: dict[str, np.ndarray] = {}
    _flatten(state, "", arrays)
    return sum(a.nbytes for key, a in arrays.items()
               if key.rpartition(".")[2] != VERSION_KEY)


def unreadable(cls: type) -> str | None:
    """Why `decode_state` could not rebuild a `cls` whatever its bytes (a field of a type
    it does not read, such as a numpy scalar type, list or dict), or None: checked from
    the class alone (once per class), so a snapshot that would not read back is never
    written."""
    return _unreadable(cls)


@functools.cache
def _unreadable(cls: type) -> str | None:
    try:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            target = _strip_optional(hints[f.name])
            if isinstance(target, type) and dataclasses.is_dataclass(target):
                problem = unreadable(target)
                if problem is not None:
                    return problem
            elif target is not np.ndarray and target not in (bool, int, float, str):
                return (f"state field {cls.__name__}.{f.name} has type {hints[f.name]!r}, "
                        "which the state codec does not read back")
    except Exception as exc:  # not a dataclass, or hints that do not resolve
        return f"state class {cls.__name__} cannot be read: {type(exc).__name__}: {exc}"
    return None


def _flatten(value: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        raise TypeError(f"state at {prefix or '<root>'} must be a dataclass instance")
    out[prefix + VERSION_KEY] = np.asarray(state_version(type(value)), dtype=np.int64)
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
    if prefix:  # the root's version was settled by `decode_state`
        stored, current = stored_version(arrays, prefix), state_version(cls)
        if stored != current:
            raise _version_error(cls, prefix, stored, current)
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
