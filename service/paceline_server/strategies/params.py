"""Strategy parameters: frozen dataclasses with defaults, parsed from plain mappings.

Each strategy declares `Params` (a frozen dataclass); `parse_params` rejects unknown
keys, coerces ints to floats, and lets `__post_init__` check ranges with `require`.
`params_to_dict` gives the canonical form (defaults filled), so two specs compare equal
when they mean the same.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from paceline_server.domain.errors import InvalidParams
from paceline_server.domain.validation import MAX_INT, MAX_PARAM, check_finite_float

P = TypeVar("P")


def require(condition: bool, message: str, field: str | None = None) -> None:
    """Raise InvalidParams with `message` unless `condition`."""
    if not condition:
        raise InvalidParams(message, {"field": field} if field else None)


def parse_params(cls: type[P], values: Mapping[str, Any] | None, owner: str) -> P:
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InvalidParams(
            f"{owner}: unknown parameter(s) {unknown}; valid: {sorted(fields)}",
            {"strategy": owner, "unknown": unknown, "valid": sorted(fields)},
        )
    hints = typing.get_type_hints(cls)
    coerced = {name: _coerce(value, hints[name], f"{owner}.{name}")
               for name, value in values.items()}
    try:
        return cls(**coerced)
    except InvalidParams as exc:
        exc.message = f"{owner}: {exc.message}"
        exc.args = (exc.message,)
        exc.details.setdefault("strategy", owner)
        raise


def params_to_dict(params: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        result[f.name] = value
    return result


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except InvalidParams as exc:
                errors.append(exc.message)
        raise InvalidParams(f"{name}: {'; '.join(errors) or 'invalid value'}", {"field": name})
    if origin is Literal:
        if value not in args:
            raise InvalidParams(f"{name} must be one of {list(args)}; got {value!r}",
                                {"field": name})
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidParams(f"{name} must be true or false; got {value!r}", {"field": name})
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParams(f"{name} must be an integer; got {value!r}", {"field": name})
        if abs(value) > MAX_INT:
            raise InvalidParams(f"{name} must be within +-{MAX_INT}; got {value}",
                                {"field": name})
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParams(f"{name} must be a number; got {value!r}", {"field": name})
        return check_finite_float(value, name, InvalidParams, limit=MAX_PARAM)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidParams(f"{name} must be a string; got {value!r}", {"field": name})
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InvalidParams(f"{name} must be a list; got {value!r}", {"field": name})
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise InvalidParams(f"{name} must be a mapping; got {value!r}", {"field": name})
        item = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, item, f"{name}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    raise InvalidParams(f"{name}: unsupported parameter type {hint!r}", {"field": name})
