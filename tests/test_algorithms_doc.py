"""docs/algorithms.md against the code: one section per built-in sampler and weighting,
and every parameter table lists the parameters of the strategy's `params_type`, in
order, with the defaults the code has. The zero-variance option and the health constants
are checked the same way, so a default changed in the code and not on the page (or the
other way round) fails here."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from paceline_server.domain.spec import ZeroVarianceSpec
from paceline_server.engine import health
from paceline_server.strategies import registry

PAGE = Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"
HEADING = re.compile(r"^(#{2,3}) (.*)$")
ROW = re.compile(r"^\| `([A-Za-z_]\w*)` \| `([^`]*)` \|")
GROUPS = {"Samplers": registry.SAMPLERS, "Weightings": registry.WEIGHTINGS}
ZERO_VARIANCE = "Zero-variance skipping (curriculum option `zero_variance`)"
HEALTH = "Health flags (`engine/health.py`)"


def tables(text: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(section, subsection) -> the (name, default) rows of its table(s), in order; a
    subsection named by a code span (`### `dump_ucb``) is keyed by the bare name."""
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    section = subsection = ""
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            level, title = heading.groups()
            if level == "##":
                section, subsection = title, ""
            else:
                subsection = title.strip("`") if re.fullmatch(r"`\w+`", title) else title
            found.setdefault((section, subsection), [])
            continue
        row = ROW.match(line)
        if row:
            found.setdefault((section, subsection), []).append((row[1], row[2]))
    return found


def plain(value: Any) -> Any:
    """A default as the spec and `GET /v1/strategies` write it (JSON)."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def defaults(params_type: type) -> list[tuple[str, Any]]:
    result = []
    for f in dataclasses.fields(params_type):
        if f.default is not dataclasses.MISSING:
            result.append((f.name, plain(f.default)))
        else:
            assert f.default_factory is not dataclasses.MISSING, f.name
            result.append((f.name, plain(f.default_factory())))
    return result


def mismatches(rows: list[tuple[str, str]], expected: list[tuple[str, Any]]) -> list[str]:
    """What differs between a table and the code: names (and their order), then each
    documented default, compared as JSON with its type (`1` is not `1.0`, `0` not
    `false`)."""
    names = [name for name, _ in rows]
    wanted = [name for name, _ in expected]
    if names != wanted:
        return [f"parameters {names} != code {wanted}"]
    problems = []
    for (name, shown), (_, value) in zip(rows, expected, strict=True):
        try:
            documented = json.loads(shown)
        except json.JSONDecodeError:
            problems.append(f"{name}: {shown!r} is not JSON")
            continue
        if documented != value or type(documented) is not type(value):
            problems.append(f"{name}: page says {shown}, code has {json.dumps(value)}")
    return problems


def check(text: str) -> list[str]:
    found = tables(text)
    problems = []
    for section, table in GROUPS.items():
        documented = {sub for (sec, sub) in found if sec == section and sub}
        strategies = set(table.builtins)
        missing, extra = strategies - documented, {
            sub for sub in documented - strategies if re.fullmatch(r"\w+", sub)}
        if missing or extra:
            problems.append(f"{section}: no section for {sorted(missing)}, "
                            f"sections for unknown {sorted(extra)}")
        for name in sorted(strategies & documented):
            problems += [f"{section} {name}: {p}" for p in mismatches(
                found[(section, name)], defaults(table.builtin(name).params_type))]
    zero_variance = [(f.name, f.default) for f in dataclasses.fields(ZeroVarianceSpec)]
    problems += [f"zero_variance: {p}" for p in mismatches(
        found.get(("Samplers", ZERO_VARIANCE), []), zero_variance)]
    rows = found.get((HEALTH, ""), [])
    problems += [f"health: {p}" for p in mismatches(
        rows, [(name, getattr(health, name, None)) for name, _ in rows])]
    if not rows:
        problems.append("health: no constants table")
    return problems


def test_the_page_matches_the_code() -> None:
    problems = check(PAGE.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("old", "new", "fragment"), [
    ("| `tau` | `0.1` |", "| `tau` | `0.2` |", "Samplers dump_ucb: tau: page says 0.2"),
    ("| `window` | `300` |", "| `window` | `300.0` |", "window: page says 300.0"),
    ("| `pass_spent` | `true` |", "| `pass_spent` | `1` |", "pass_spent: page says 1"),
    ("| `eta_proxy` | `0.5` | step on the rollout estimate |\n", "",
     "Weightings gradient: parameters"),
    ("### `fixed`", "### `static`", "no section for ['fixed']"),
    ("| `explore` | `0.5` |", "| `explore` | `1.0` |", "zero_variance: explore"),
    ("| `WINDOW` | `50` |", "| `WINDOW` | `40` |", "health: WINDOW"),
])
def test_the_check_catches_a_stale_page(old: str, new: str, fragment: str) -> None:
    """The check itself: a wrong default, a wrong type, a missing parameter or section."""
    text = PAGE.read_text()
    assert text.count(old) == 1, old
    problems = check(text.replace(old, new))
    assert any(fragment in p for p in problems), problems
