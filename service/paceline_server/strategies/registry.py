"""Name -> strategy class, for built-ins and plug-ins.

Built-ins are imported lazily by dotted path. Third parties register classes through the
entry-point groups `paceline.samplers` and `paceline.weightings`, e.g. in their
pyproject.toml::

    [project.entry-points."paceline.samplers"]
    my_sampler = "my_package.sampler:MySampler"

A plug-in class follows the contract in `strategies.base` and is then usable by name in
any curriculum spec. `register_sampler` / `register_weighting` do the same at run time.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from paceline_server.domain.errors import InvalidParams, UnknownStrategy
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec, StrategySpec
from paceline_server.strategies.base import Sampler, Weighting
from paceline_server.strategies.params import params_to_dict, parse_params

SAMPLER_GROUP = "paceline.samplers"
WEIGHTING_GROUP = "paceline.weightings"

_BUILTIN_SAMPLERS = {
    "uniform": "paceline_server.strategies.uniform:UniformSampler",
    "fixed_mix": "paceline_server.strategies.fixed_mix:FixedMixSampler",
    "temperature": "paceline_server.strategies.temperature:TemperatureSampler",
    "dump_ucb": "paceline_server.strategies.dump_ucb:DumpUcbSampler",
    "learning_progress": "paceline_server.strategies.learning_progress:LearningProgressSampler",
    "prioritized": "paceline_server.strategies.prioritized:PrioritizedSampler",
    "learnability": "paceline_server.strategies.learnability:LearnabilitySampler",
    "spard": "paceline_server.strategies.spard_sampler:SpardSampler",
}
_BUILTIN_WEIGHTINGS = {
    "fixed": "paceline_server.strategies.fixed:FixedWeighting",
    "hypervolume": "paceline_server.strategies.hypervolume:HypervolumeWeighting",
    "gradient": "paceline_server.strategies.gradient:GradientWeighting",
    "spard": "paceline_server.strategies.spard_weighting:SpardWeighting",
}
_registered_samplers: dict[str, type[Sampler[Any, Any]]] = {}
_registered_weightings: dict[str, type[Weighting[Any, Any]]] = {}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _load_plugin(kind: str, name: str, entry: Any) -> Any:
    """Load an entry point; a broken plug-in is a clear spec error, not a crash."""
    try:
        return entry.load()
    except Exception as exc:
        raise UnknownStrategy(f"{kind} {name!r} is registered by a plug-in that failed to "
                              f"load: {exc}", {"kind": name}) from exc


def _plugins(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def register_sampler(cls: type[Sampler[Any, Any]]) -> type[Sampler[Any, Any]]:
    _registered_samplers[cls.name] = cls
    return cls


def register_weighting(cls: type[Weighting[Any, Any]]) -> type[Weighting[Any, Any]]:
    _registered_weightings[cls.name] = cls
    return cls


def available_samplers() -> list[str]:
    return sorted(set(_BUILTIN_SAMPLERS) | set(_registered_samplers) | set(_plugins(SAMPLER_GROUP)))


def available_weightings() -> list[str]:
    return sorted(
        set(_BUILTIN_WEIGHTINGS) | set(_registered_weightings) | set(_plugins(WEIGHTING_GROUP))
    )


def origin(group: str, name: str) -> str:
    """Where a strategy comes from: "registered" at run time, "builtin", or "plugin" (an
    entry point); `group` is "sampler" or "weighting". Run-time registration wins, as in
    `sampler_class`."""
    registered, builtins, entry_group = (
        (_registered_samplers, _BUILTIN_SAMPLERS, SAMPLER_GROUP) if group == "sampler"
        else (_registered_weightings, _BUILTIN_WEIGHTINGS, WEIGHTING_GROUP))
    if name in registered:
        return "registered"
    if name in builtins:
        return "builtin"
    if name in _plugins(entry_group):
        return "plugin"
    raise UnknownStrategy(f"unknown {group} {name!r}", {"kind": name})


def sampler_class(name: str) -> type[Sampler[Any, Any]]:
    if name in _registered_samplers:
        return _registered_samplers[name]
    if name in _BUILTIN_SAMPLERS:
        return _load(_BUILTIN_SAMPLERS[name])
    plugins = _plugins(SAMPLER_GROUP)
    if name in plugins:
        return _load_plugin("sampler", name, plugins[name])
    raise UnknownStrategy(
        f"unknown sampler {name!r}; available: {available_samplers()}",
        {"kind": name, "available": available_samplers()},
    )


def weighting_class(name: str) -> type[Weighting[Any, Any]]:
    if name in _registered_weightings:
        return _registered_weightings[name]
    if name in _BUILTIN_WEIGHTINGS:
        return _load(_BUILTIN_WEIGHTINGS[name])
    plugins = _plugins(WEIGHTING_GROUP)
    if name in plugins:
        return _load_plugin("weighting", name, plugins[name])
    raise UnknownStrategy(
        f"unknown weighting {name!r}; available: {available_weightings()}",
        {"kind": name, "available": available_weightings()},
    )


def build_sampler(spec: StrategySpec, layout: DatasetLayout,
                  objectives: tuple[ObjectiveSpec, ...]) -> Sampler[Any, Any]:
    cls = sampler_class(spec.kind)
    owner = f"sampler {spec.kind}"
    params = parse_params(cls.params_type, spec.params, owner)
    with _prefixed(owner):
        return cls(layout, objectives, params)


def build_weighting(spec: StrategySpec,
                    objectives: tuple[ObjectiveSpec, ...]) -> Weighting[Any, Any]:
    cls = weighting_class(spec.kind)
    owner = f"weighting {spec.kind}"
    params = parse_params(cls.params_type, spec.params, owner)
    with _prefixed(owner):
        return cls(objectives, params)


@contextmanager
def _prefixed(owner: str) -> Iterator[None]:
    """Checks that need the layout or objectives run in the constructor; give their
    errors the same "<kind> <name>: " prefix as parameter errors."""
    try:
        yield
    except InvalidParams as exc:
        if not exc.message.startswith(owner):
            exc.message = f"{owner}: {exc.message}"
            exc.args = (exc.message,)
        exc.details.setdefault("strategy", owner)
        raise


def canonical(spec: StrategySpec, params: Any) -> StrategySpec:
    """The spec with every parameter spelled out (defaults filled)."""
    return StrategySpec(kind=spec.kind, params=params_to_dict(params))
