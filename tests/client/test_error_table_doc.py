"""docs/client.md's error table names every stable code the client maps, under the
class the client raises for it (six codes were missing)."""

from __future__ import annotations

import re
from pathlib import Path

from paceline import errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def test_every_code_is_in_its_class_row() -> None:
    rows = {match[1]: set(re.findall(r"`([A-Z_]+)`", match[2]))
            for match in re.finditer(r"^\| `(\w+)`[^|]*\| (.*) \|$", DOC.read_text(),
                                     flags=re.MULTILINE)}
    for code, cls in errors._BY_CODE.items():
        assert code in rows.get(cls.__name__, set()), (code, cls.__name__)
