"""docs/deployment.md's settings table names every setting the service reads, so a new
one cannot ship undocumented (the metrics' distribution cap and SQLite's durability
mode once did), and names nothing the service does not read; each row's default and
bounds are the ones settings.py checks (the README sends readers there for "every
setting, with its bounds", and only two rows had theirs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic.types import AllowInfNan

from paceline_server.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
ROW = re.compile(r"^\| `(PACELINE_[A-Z_]+)` \| ([^|]+) \| ([^|]+) \|", flags=re.MULTILINE)


def rows() -> list[tuple[str, str, str]]:
    """(variable, default cell, bounds cell) of each row of the settings table."""
    text = DOC.read_text()
    table = text[text.index("## Settings"):text.index("## The image")]
    return [(name, default.strip(), bounds.strip())
            for name, default, bounds in ROW.findall(table)]


def documented() -> list[str]:
    return [name for name, _, _ in rows()]


def test_every_setting_has_one_row() -> None:
    names = documented()
    assert len(names) == len(set(names))
    assert set(names) == {f"PACELINE_{field.upper()}" for field in Settings.model_fields}


#: Defaults the table says in words: what each stands for in settings.py.
WORDS: dict[str, Any] = {"off": None, "unset": None, "SQLite only": None,
                         "the rate, rounded up": None, "automatic": None,
                         "true": True, "false": False}
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


def number(text: str) -> float:
    """`64 MiB`, `10 000`, `10⁶`, `0.5`, as a number."""
    text = text.strip()
    unit = 1
    for name, size in UNITS.items():
        if text.endswith(name):
            text, unit = text[: -len(name)].strip(), size
    if text.startswith("10") and text[2:] and not text[2:].isascii():
        return 10 ** int(text[2:].translate(SUPERSCRIPTS)) * unit
    return float(text.replace(" ", "")) * unit


def documented_default(cell: str) -> Any:
    if cell in WORDS:
        return WORDS[cell]
    if cell.startswith("`"):
        value = cell.strip("`")
        return {} if value == "{}" else value
    return number(cell)


def documented_bounds(cell: str) -> dict[str, float]:
    """`1–10⁶`, `≥ 1 KiB`, `> 0, ≤ 30`, `1–100 characters`, `—` (none) as bounds."""
    if cell == "—":
        return {}
    found: dict[str, float] = {}
    characters = cell.endswith(" characters")
    for part in cell.removesuffix(" characters").split(", "):
        if part == "finite":
            found["finite"] = True
        elif "–" in part:
            low, high = part.split("–")
            found.update(ge=number(low), le=number(high))
        else:
            sign, value = part.split(" ", 1)
            found[{"≥": "ge", ">": "gt", "≤": "le", "<": "lt"}[sign]] = number(value)
    if characters:
        found = {{"ge": "min_length", "le": "max_length"}[k]: v for k, v in found.items()}
    return found


def checked_bounds(field: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for rule in Settings.model_fields[field].metadata:
        if isinstance(rule, AllowInfNan):
            if not rule.allow_inf_nan:
                found["finite"] = True
            continue
        for key in ("gt", "ge", "lt", "le", "min_length", "max_length"):
            if hasattr(rule, key):
                found[key] = getattr(rule, key)
    return found


@pytest.mark.parametrize(("variable", "default", "bounds"), rows(),
                         ids=[name for name, _, _ in rows()])
def test_each_row_gives_the_default_and_bounds_the_service_checks(
        variable: str, default: str, bounds: str) -> None:
    field = variable.removeprefix("PACELINE_").lower()
    assert documented_default(default) == \
        Settings.model_fields[field].get_default(call_default_factory=True)
    assert documented_bounds(bounds) == checked_bounds(field)


def test_the_readmes_settings_give_the_same_defaults() -> None:
    """README.md's short table ("Operating it") quotes defaults too."""
    text = (DOC.parents[1] / "README.md").read_text()
    table = text[text.index("## Operating it"):]
    table = table[:table.index("\n\n", table.index("| Setting"))]
    found = re.findall(r"^\| `(PACELINE_[A-Z_]+)`[^|]* \| ([^|]+) \|", table, flags=re.MULTILINE)
    assert len(found) >= 10
    for variable, default in found:
        field = variable.removeprefix("PACELINE_").lower()
        assert documented_default(default.strip()) == \
            Settings.model_fields[field].get_default(call_default_factory=True), variable
