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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from paceline_server.domain.errors import InvalidParams, UnknownStrategy
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec, StrategySpec
from paceline_server.strategies.base import Sampler, Weighting
from paceline_server.strategies.params import parse_params

SAMPLER_GROUP = "paceline.samplers"
WEIGHTING_GROUP = "paceline.weightings"

T = TypeVar("T", bound="Sampler[Any, Any] | Weighting[Any, Any]")


class Registry(Generic[T]):
    """Names -> classes of one kind (samplers or weightings), from three sources looked
    up in this order: classes registered at run time, the built-ins (dotted paths,
    imported on first use so that listing names imports no strategy), and entry points of
    `group`. One instance per kind; both kinds share this code."""

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str]) -> None:
        self.kind = kind  # "sampler" or "weighting", as error messages name it
        self.group = group
        self.builtins = dict(builtins)
        self.registered: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        self.registered[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(set(self.builtins) | set(self.registered) | set(self._plugins()))

    def origin(self, name: str) -> str:
        """Where `name` comes from: "registered" at run time, "builtin", or "plugin" (an
        entry point); run-time registration wins, as in `get`."""
        if name in self.registered:
            return "registered"
        if name in self.builtins:
            return "builtin"
        if name in self._plugins():
            return "plugin"
        raise UnknownStrategy(f"unknown {self.kind} {name!r}", {"kind": name})

    def get(self, name: str) -> type[T]:
        if name in self.registered:
            return self.registered[name]
        if name in self.builtins:
            return self.builtin(name)
        plugins = self._plugins()
        if name in plugins:
            return self._load_plugin(name, plugins[name])
        raise UnknownStrategy(
            f"unknown {self.kind} {name!r}; available: {self.names()}",
            {"kind": name, "available": self.names()},
        )

    def builtin(self, name: str) -> type[T]:
        """The built-in class of `name`, even when a class registered at run time shadows
        it (strategies composed of built-ins rely on their state classes)."""
        module, _, attr = self.builtins[name].partition(":")
        cls: type[T] = getattr(importlib.import_module(module), attr)
        return cls

    def preload(self) -> None:
        """Import every built-in now. A server calls this at start so that the first
        request for a curriculum does not pay for the imports (tens of ms: moocore)."""
        for name in self.builtins:
            self.builtin(name)

    def _plugins(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def _load_plugin(self, name: str, entry: Any) -> type[T]:
        """Load an entry point; a broken plug-in is a clear spec error, not a crash."""
        try:
            cls: type[T] = entry.load()
        except Exception as exc:
            raise UnknownStrategy(f"{self.kind} {name!r} is registered by a plug-in that "
                                  f"failed to load: {exc}", {"kind": name}) from exc
        missing = [a for a in ("params_type", "state_type") if not hasattr(cls, a)]
        if not isinstance(cls, type) or missing:
            raise UnknownStrategy(
                f"{self.kind} {name!r} is registered by a plug-in whose entry point "
                f"{entry.value!r} is not a {self.kind} class (it lacks "
                f"{', '.join(missing) or 'a class'})", {"kind": name})
        return cls

    def plugin_problems(self) -> list[str]:
        """What an operator should hear at start about this group's entry points: those
        that fail to load, and those a built-in of the same name shadows."""
        found = []
        for name, entry in sorted(self._plugins().items()):
            if name in self.builtins:
                found.append(f"{self.kind} plug-in {name!r} ({entry.value}) is shadowed "
                             f"by the built-in {self.kind} of that name and never used")
                continue
            try:
                self._load_plugin(name, entry)
            except UnknownStrategy as exc:
                found.append(exc.message)
        return found


SAMPLERS: Registry[Sampler[Any, Any]] = Registry("sampler", SAMPLER_GROUP, {
    "uniform": "paceline_server.strategies.samplers.uniform:UniformSampler",
    "fixed_mix": "paceline_server.strategies.samplers.fixed_mix:FixedMixSampler",
    "temperature": "paceline_server.strategies.samplers.temperature:TemperatureSampler",
    "dump_ucb": "paceline_server.strategies.samplers.dump_ucb:DumpUcbSampler",
    "learning_progress":
        "paceline_server.strategies.samplers.learning_progress:LearningProgressSampler",
    "prioritized": "paceline_server.strategies.samplers.prioritized:PrioritizedSampler",
    "learnability": "paceline_server.strategies.samplers.learnability:LearnabilitySampler",
    "spard": "paceline_server.strategies.samplers.spard:SpardSampler",
})
WEIGHTINGS: Registry[Weighting[Any, Any]] = Registry("weighting", WEIGHTING_GROUP, {
    "fixed": "paceline_server.strategies.weightings.fixed:FixedWeighting",
    "hypervolume": "paceline_server.strategies.weightings.hypervolume:HypervolumeWeighting",
    "gradient": "paceline_server.strategies.weightings.gradient:GradientWeighting",
    "spard": "paceline_server.strategies.weightings.spard:SpardWeighting",
})
_REGISTRIES: dict[str, Registry[Any]] = {"sampler": SAMPLERS, "weighting": WEIGHTINGS}
# The tables under their earlier names (tests clean up run-time registrations through them).
_BUILTIN_SAMPLERS = SAMPLERS.builtins
_BUILTIN_WEIGHTINGS = WEIGHTINGS.builtins
_registered_samplers = SAMPLERS.registered
_registered_weightings = WEIGHTINGS.registered


def register_sampler(cls: type[Sampler[Any, Any]]) -> type[Sampler[Any, Any]]:
    return SAMPLERS.register(cls)


def register_weighting(cls: type[Weighting[Any, Any]]) -> type[Weighting[Any, Any]]:
    return WEIGHTINGS.register(cls)


def preload_builtins() -> None:
    """Import the built-in samplers and weightings (see `Registry.preload`)."""
    SAMPLERS.preload()
    WEIGHTINGS.preload()


def plugin_problems() -> list[str]:
    """Plug-ins (entry points) that fail to load or are shadowed by a built-in."""
    return SAMPLERS.plugin_problems() + WEIGHTINGS.plugin_problems()


def available_samplers() -> list[str]:
    return SAMPLERS.names()


def available_weightings() -> list[str]:
    return WEIGHTINGS.names()


def origin(group: str, name: str) -> str:
    """Where a strategy comes from (see `Registry.origin`); `group` is "sampler" or
    "weighting"."""
    return _REGISTRIES[group].origin(name)


def sampler_class(name: str) -> type[Sampler[Any, Any]]:
    return SAMPLERS.get(name)


def weighting_class(name: str) -> type[Weighting[Any, Any]]:
    return WEIGHTINGS.get(name)


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
