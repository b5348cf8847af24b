"""docs/deployment.md's settings table names every setting the service reads, so a new
one cannot ship undocumented (the metrics' distribution cap and SQLite's durability
mode once did), and names nothing the service does not read."""

from __future__ import annotations

import re
from pathlib import Path

from paceline_server.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"


def documented() -> list[str]:
    text = DOC.read_text()
    table = text[text.index("## Settings"):text.index("## The image")]
    return re.findall(r"^\| `(PACELINE_[A-Z_]+)` \|", table, flags=re.MULTILINE)


def test_every_setting_has_one_row() -> None:
    names = documented()
    assert len(names) == len(set(names))
    assert set(names) == {f"PACELINE_{field.upper()}" for field in Settings.model_fields}
