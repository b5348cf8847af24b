"""The strategy catalogue behind `GET /v1/strategies`: every sampler and weighting the
registry knows (built-ins, classes registered at run time, entry-point plug-ins), each
with its parameters, their types and defaults, and which configuration a curriculum that
names none gets.

Read off the registry and the strategies' `params_type` dataclasses on every call, so a
plug-in registered after start appears at once. A plug-in that fails to load is listed
with its error instead of failing the whole listing (using it in a spec is refused with
the same message).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from paceline_server.domain.errors import PacelineError
from paceline_server.domain.spec import DEFAULT_SAMPLER, DEFAULT_WEIGHTING, StrategySpec
from paceline_server.strategies import registry
from paceline_server.strategies.params import parse_params

Group = Literal["sampler", "weighting"]


@dataclass(frozen=True)
class ParamInfo:
    """One parameter: `type` in Python spelling (`float`, `int | None`, `list[float]`),
    `choices` for a fixed set of values, `default` as JSON (None when `required`)."""

    name: str
    type: str
    default: Any
    required: bool
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    origin: str  # "builtin", "registered" (at run time) or "plugin" (entry point)
    is_default: bool  # the one a curriculum gets when its spec names none
    description: str  # the first paragraph of the class docstring
    params: tuple[ParamInfo, ...]
    error: str | None = None  # a plug-in that failed to load: why


@dataclass(frozen=True)
class StrategyCatalog:
    samplers: tuple[StrategyInfo, ...]
    weightings: tuple[StrategyInfo, ...]
    default_sampler: dict[str, Any]  # the canonical spec: {"kind", "params"} filled in
    default_weighting: dict[str, Any]


def strategy_catalog() -> StrategyCatalog:
    """Everything registered right now, by name."""
    return StrategyCatalog(
        samplers=tuple(_info("sampler", n, DEFAULT_SAMPLER)
                       for n in registry.available_samplers()),
        weightings=tuple(_info("weighting", n, DEFAULT_WEIGHTING)
                         for n in registry.available_weightings()),
        default_sampler=_canonical("sampler", DEFAULT_SAMPLER),
        default_weighting=_canonical("weighting", DEFAULT_WEIGHTING))


def _class(group: Group, name: str) -> Any:
    return registry.sampler_class(name) if group == "sampler" \
        else registry.weighting_class(name)


def _canonical(group: Group, spec: StrategySpec) -> dict[str, Any]:
    cls = _class(group, spec.kind)
    params = parse_params(cls.params_type, spec.params, f"{group} {spec.kind}")
    return {"kind": spec.kind, "params": cls.spelled_params(params)}


def _info(group: Group, name: str, default: StrategySpec) -> StrategyInfo:
    origin = registry.origin(group, name)
    try:
        cls = _class(group, name)
        return StrategyInfo(name=name, origin=origin, is_default=name == default.kind,
                            description=_description(cls), params=_params(cls.params_type))
    except PacelineError as exc:
        error = exc.message
    except Exception as exc:  # a plug-in whose parameters cannot be read
        error = f"{group} {name!r} cannot be described: {type(exc).__name__}: {exc}"
    return StrategyInfo(name=name, origin=origin, is_default=False, description="",
                        params=(), error=error)


def _description(cls: type) -> str:
    """The class's own docstring (not a base class's), else its module's."""
    doc = cls.__dict__.get("__doc__") or inspect.getdoc(inspect.getmodule(cls)) or ""
    return " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())


def _params(params_type: type) -> tuple[ParamInfo, ...]:
    hints = typing.get_type_hints(params_type)
    found = []
    for f in dataclasses.fields(params_type):
        if f.default is not dataclasses.MISSING:
            default, required = f.default, False
        elif f.default_factory is not dataclasses.MISSING:
            default, required = f.default_factory(), False
        else:
            default, required = None, True
        hint = hints[f.name]
        found.append(ParamInfo(name=f.name, type=_type_name(hint), default=_plain(default),
                               required=required, choices=_choices(hint)))
    return tuple(found)


def _plain(value: Any) -> Any:
    """JSON-ready, as `params_to_dict` writes canonical specs."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _choices(hint: Any) -> tuple[Any, ...] | None:
    if get_origin(hint) is Literal:
        return get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType):
        for arg in get_args(hint):
            if get_origin(arg) is Literal:
                return get_args(arg)
    return None


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        kinds = sorted({type(a).__name__ for a in args})
        return " | ".join(kinds)
    if origin is tuple:
        return f"list[{_type_name(args[0]) if args else 'Any'}]"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        value = _type_name(args[1]) if len(args) == 2 else "Any"
        return f"dict[str, {value}]"
    if hint is type(None):
        return "None"
    if hint is Any:
        return "Any"
    return getattr(hint, "__name__", str(hint))
