"""The service's import graph, read from the source with `ast` (nothing is imported):
one transport never imports the other (both build on `transport/` and the app), and no
modules import each other in a circle.

Every import counts, at module level or inside a function; only imports under
`if TYPE_CHECKING:` are left out of the circle check, as they never run.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import paceline_server

ROOT = Path(paceline_server.__file__).resolve().parent
PACKAGE = ROOT.name
#: Generated protobuf modules: not written by hand, and they import only protobuf.
GENERATED = ROOT / "grpc" / "v1"
#: Circles tolerated for now: none (store/sql.py <-> store/migrate.py ended when the
#: connection setup moved to store/connection.py). A circle not listed here fails the test.
KNOWN_CIRCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))
           if GENERATED not in p.parents}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skipped.update(id(n) for n in ast.walk(statement))
    return skipped


def _resolve(name: str) -> str | None:
    """The module of ours `name` is (or lies in): `a.b.c` may be a module or a name
    defined in module `a.b`."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, *, runtime: bool) -> set[str]:
    """Our modules that module `name` imports (`runtime`: leave out type-only ones)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree) if runtime else set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = {_resolve(t) for t in targets if t == PACKAGE or t.startswith(f"{PACKAGE}.")}
    return {t for t in found if t is not None and t != name}


@functools.cache  # every test reads the same source: parse it once per session
def graph(*, runtime: bool) -> dict[str, set[str]]:
    return {name: imports_of(name, runtime=runtime) for name in MODULES}


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in edges:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _in(module: str, package: str) -> bool:
    prefix = f"{PACKAGE}.{package}"
    return module == prefix or module.startswith(f"{prefix}.")


def test_the_graph_is_read_from_the_source() -> None:
    edges = graph(runtime=False)
    assert len(edges) > 50
    # A plain, a relative-free `from x import module` and a lazy (in-function) import.
    assert f"{PACKAGE}.transport.errors" in edges[f"{PACKAGE}.api.errors"]
    assert f"{PACKAGE}.transport.metrics" in edges[f"{PACKAGE}.grpc.service"]
    assert f"{PACKAGE}.api.app" in edges[f"{PACKAGE}.cli"]


def test_no_transport_imports_another() -> None:
    crossing = sorted(
        (source, target) for source, targets in graph(runtime=False).items()
        for target in targets
        for a, b in (("api", "grpc"), ("grpc", "api"))
        if _in(source, a) and _in(target, b))
    assert crossing == [], "REST and gRPC share code through transport/, not each other"


def test_the_shared_transport_package_imports_neither_transport() -> None:
    upward = sorted(
        (source, target) for source, targets in graph(runtime=False).items()
        if _in(source, "transport") for target in targets
        if _in(target, "api") or _in(target, "grpc"))
    assert upward == []


def test_no_import_circle() -> None:
    found = set(circles(graph(runtime=True)))
    new = [sorted(c) for c in found - KNOWN_CIRCLES]
    assert new == [], f"modules importing each other: {new}"


def test_the_circle_finder_finds_circles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert circles(edges) == [frozenset({"a", "b", "c"})]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_dependencies_point_inwards() -> None:
    """api/grpc -> app -> engine/strategies/store -> domain: the use cases and the layers
    under them import no transport and no adapter (a Redis coordinator is handed to the
    app at start-up), and the domain imports none of the layers above it."""
    outer = ("api", "grpc", "transport", "adapters", "cli", "remote", "demo", "ui")
    inner = ("app", "engine", "strategies", "store", "domain")
    upward = sorted(
        (source, target) for source, targets in graph(runtime=False).items()
        if any(_in(source, p) for p in inner) for target in targets
        if any(_in(target, p) for p in outer)
        or (_in(source, "domain") and any(_in(target, p) for p in inner[:-1])))
    assert upward == []
