"""The shape of `paceline_server.strategies`: samplers in `samplers/`, weightings in
`weightings/`, shared pieces beside them, and no sibling imports. A sampler or weighting
module imports only shared modules; a shared module imports no sampler or weighting (a
strategy composed of another, like `learnability` allocating through `dump_ucb`, looks it
up by name in the registry). Read from the source with `ast`, so an import inside a
function or under `TYPE_CHECKING` counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from paceline_server import strategies
from paceline_server.strategies import registry
from paceline_server.strategies.allocation import DumpUcbState, LearningProgressState

PACKAGE = "paceline_server.strategies"
ROOT = Path(strategies.__file__).parent
STRATEGY_PACKAGES = ("samplers", "weightings")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, as absolute dotted names;
    `from a import b` yields both `a` and `a.b`, since `b` may be a module."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(module: str, imported: set[str]) -> list[str]:
    """The imports of `module` that break the rule."""
    own = module.split(".")[2] if module.count(".") >= 2 else None
    inside = own if own in STRATEGY_PACKAGES and module != f"{PACKAGE}.{own}" else None
    targets = {".".join(name.split(".")[:4]) for name in imported
               if name.startswith(PACKAGE + ".")}  # down to the strategy module
    bad = []
    for name in sorted(targets):
        target = name.split(".")[2]
        if target not in STRATEGY_PACKAGES or name == f"{PACKAGE}.{target}":
            continue  # a shared module, or a bare package name (its __init__ holds nothing)
        if inside is None:
            bad.append(f"{module} (shared) imports the {target[:-1]} {name}")
        elif name != module:
            bad.append(f"{module} imports {name}")
    return bad


def all_modules() -> dict[str, tuple[str, bool]]:
    return {module_name(path): (path.read_text(), path.name == "__init__.py")
            for path in sorted(ROOT.rglob("*.py"))}


def test_samplers_and_weightings_live_in_their_packages() -> None:
    """Every built-in points into its kind's package, and every module there is a
    registered strategy (no shared helper hides among them)."""
    for table, package in ((registry.SAMPLERS, "samplers"),
                           (registry.WEIGHTINGS, "weightings")):
        modules = {path.partition(":")[0] for path in table.builtins.values()}
        assert all(m.startswith(f"{PACKAGE}.{package}.") for m in modules), modules
        found = {module_name(p) for p in (ROOT / package).glob("*.py")
                 if p.name != "__init__.py"}
        assert found == modules


def test_no_sibling_imports() -> None:
    modules = all_modules()
    assert f"{PACKAGE}.samplers.learnability" in modules
    assert f"{PACKAGE}.allocation" in modules
    bad = [v for name, (source, is_package) in modules.items()
           for v in violations(name, imported_modules(source, name, is_package))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("module", "source", "expected"), [
    (f"{PACKAGE}.samplers.learnability",
     "from paceline_server.strategies.samplers.dump_ucb import DumpUcbSampler",
     [f"{PACKAGE}.samplers.learnability imports {PACKAGE}.samplers.dump_ucb"]),
    (f"{PACKAGE}.samplers.uniform", "from .dump_ucb import X",
     [f"{PACKAGE}.samplers.uniform imports {PACKAGE}.samplers.dump_ucb"]),
    (f"{PACKAGE}.weightings.fixed", "from ..samplers import uniform",
     [f"{PACKAGE}.weightings.fixed imports {PACKAGE}.samplers.uniform"]),
    (f"{PACKAGE}.samplers.spard",
     "def f():\n    import paceline_server.strategies.weightings.spard",
     [f"{PACKAGE}.samplers.spard imports {PACKAGE}.weightings.spard"]),
    (f"{PACKAGE}.allocation",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from paceline_server.strategies.samplers.dump_ucb import DumpUcbSampler",
     [f"{PACKAGE}.allocation (shared) imports the sampler {PACKAGE}.samplers.dump_ucb"]),
    (f"{PACKAGE}.kernels", "from paceline_server.strategies.weightings import fixed",
     [f"{PACKAGE}.kernels (shared) imports the weighting {PACKAGE}.weightings.fixed"]),
    (f"{PACKAGE}.samplers.uniform",
     "from paceline_server.strategies.base import Sampler\n"
     "from paceline_server.strategies import kernels\nimport numpy", []),
])
def test_the_rule_catches_sibling_imports(module: str, source: str,
                                          expected: list[str]) -> None:
    """The checker itself: each form of import a sibling could hide behind is caught."""
    assert violations(module, imported_modules(source, module)) == expected


def test_allocators_keep_the_state_classes_the_composites_nest() -> None:
    """`learnability` and `prioritized` type their nested allocator states with the
    classes in `allocation`; the built-in allocators must keep exactly those."""
    assert registry.SAMPLERS.builtin("dump_ucb").state_type is DumpUcbState
    assert registry.SAMPLERS.builtin("learning_progress").state_type is LearningProgressState


def test_shared_kernels_are_written_once() -> None:
    """`softmax` and `preference_vector` are defined in `kernels` only; a strategy that
    needs one imports it instead of carrying its own copy."""
    shared = {"softmax", "preference_vector"}
    defined = {(node.name, name) for name, (source, _) in all_modules().items()
               for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.FunctionDef) and node.name in shared}
    assert defined == {(n, f"{PACKAGE}.kernels") for n in shared}
