"""Strategy registry: built-ins, run-time registration, entry-point plug-ins and
parameter parsing."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from paceline_server.domain import InvalidParams, UnknownStrategy
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies import registry
from paceline_server.strategies.params import params_to_dict, parse_params, require
from paceline_server.strategies.samplers.uniform import UniformSampler
from support import spec

BUILTIN_SAMPLERS = {"uniform", "fixed_mix", "temperature", "dump_ucb", "learning_progress",
                    "prioritized", "spard"}
BUILTIN_WEIGHTINGS = {"fixed", "hypervolume", "gradient", "spard"}


def test_builtins_are_listed() -> None:
    assert set(registry.available_samplers()) >= BUILTIN_SAMPLERS
    assert set(registry.available_weightings()) >= BUILTIN_WEIGHTINGS


def test_unknown_names_list_the_alternatives() -> None:
    with pytest.raises(UnknownStrategy, match="unknown sampler 'nope'") as info:
        CurriculumEngine(spec(sampler="nope"))
    assert info.value.code == "UNKNOWN_STRATEGY"
    assert "uniform" in info.value.details["available"]
    with pytest.raises(UnknownStrategy, match="unknown weighting 'nope'"):
        CurriculumEngine(spec(weighting="nope"))


def test_unknown_and_mistyped_params() -> None:
    with pytest.raises(InvalidParams, match="unknown parameter\\(s\\) \\['temp'\\]") as info:
        CurriculumEngine(spec(sampler={"kind": "uniform", "temp": 1}))
    assert info.value.code == "INVALID_PARAMS"
    with pytest.raises(InvalidParams, match="must be one of"):
        CurriculumEngine(spec(sampler={"kind": "uniform", "allocation": "round"}))
    with pytest.raises(InvalidParams, match="non-negative"):
        CurriculumEngine(spec(weighting={"kind": "fixed", "weights": [-1]}))
    with pytest.raises(InvalidParams, match="one entry per objective"):
        CurriculumEngine(spec(weighting={"kind": "fixed", "weights": [1, 2]}))


@dataclass(frozen=True)
class Demo:
    rate: float = 0.5
    steps: int = 3
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        require(0 < self.rate <= 1, "rate must be in (0, 1]", "rate")


class TestParseParams:
    def test_defaults_and_coercion(self) -> None:
        parsed = parse_params(Demo, {"rate": 1, "sizes": [1, 2]}, "demo")
        assert parsed == Demo(rate=1.0, sizes=(1, 2))
        assert isinstance(parsed.rate, float)
        assert params_to_dict(parsed) == {"rate": 1.0, "steps": 3, "mode": "a",
                                          "flag": False, "sizes": [1, 2]}

    @pytest.mark.parametrize(
        ("values", "fragment"),
        [({"rate": "x"}, "must be a number"), ({"rate": float("inf")}, "finite"),
         ({"steps": 1.5}, "must be an integer"), ({"steps": True}, "must be an integer"),
         ({"flag": 1}, "true or false"), ({"mode": "c"}, "one of"),
         ({"sizes": 3}, "must be a list"), ({"sizes": ["a"]}, "integer"),
         ({"rate": 2.0}, "demo: rate must be in"), ({"other": 1}, "unknown")],
    )
    def test_rejects(self, values: dict[str, object], fragment: str) -> None:
        with pytest.raises(InvalidParams, match=fragment):
            parse_params(Demo, values, "demo")


class DoubledUniform(UniformSampler):
    """A third-party sampler: uniform, registered under another name."""

    name = "doubled_uniform"


def test_runtime_registration() -> None:
    registry.register_sampler(DoubledUniform)
    try:
        assert "doubled_uniform" in registry.available_samplers()
        engine = CurriculumEngine(spec(sampler="doubled_uniform"))
        assert engine.next_batch("r", 0).indices.size == 16
    finally:
        registry._registered_samplers.pop("doubled_uniform")


def test_entry_point_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution that declares `paceline.samplers` is usable by name."""
    (tmp_path / "my_plugin.py").write_text(
        "from paceline_server.strategies.samplers.uniform import UniformSampler\n"
        "class PluginSampler(UniformSampler):\n"
        "    name = 'plugin_sampler'\n"
    )
    dist = tmp_path / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[paceline.samplers]\nplugin_sampler = my_plugin:PluginSampler\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin_sampler" in registry.available_samplers()
    engine = CurriculumEngine(spec(sampler="plugin_sampler"))
    assert type(engine.sampler).__name__ == "PluginSampler"
    sys.modules.pop("my_plugin", None)
    assert np.unique(engine.next_batch("r", 0).indices).size == 16


def test_a_service_imports_every_builtin_at_start(tmp_path: Path) -> None:
    """The first engine of a fresh server must not pay for strategy imports (moocore alone
    is ~20 ms): building the service imports them all. Run in a fresh interpreter, where
    nothing is imported yet."""
    import subprocess

    code = (
        "import sys\n"
        "from paceline_server.app.service import PacelineService\n"
        "from paceline_server.settings import Settings\n"
        "from paceline_server.store import open_store\n"
        "from paceline_server.strategies import registry\n"
        "paths = [p.partition(':')[0] for r in (registry.SAMPLERS, registry.WEIGHTINGS)"
        " for p in r.builtins.values()]\n"
        "before = [p for p in paths if p in sys.modules]\n"
        f"store = open_store('sqlite:///{tmp_path / 'p.db'}', auto_migrate=True)\n"
        "service = PacelineService(store, Settings())\n"
        "missing = [p for p in paths if p not in sys.modules]\n"
        "service.close(); store.close()\n"
        "print(len(paths), len(before), missing)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split(maxsplit=2)
    assert int(out[0]) == len(registry.SAMPLERS.builtins) + len(registry.WEIGHTINGS.builtins)
    assert int(out[1]) < int(out[0])  # importing the service alone does not import them all
    assert out[2].strip() == "[]"
