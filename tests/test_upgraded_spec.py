"""A curriculum stored by an earlier release, whose strategies have gained parameters
since: its stored spec lacks them and the engine runs them at their defaults. Creating
it again with `exist_ok` (what every trainer loop does at start) and merging its own
export compare what it runs, not the stored text: both were refused as "a different
spec" after an upgrade. A real difference is still refused, and says where."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli_support import populated
from paceline_server.app.service import effective_spec, spec_differences
from paceline_server.app.transfer import export_curriculum, import_curriculum, read_lines
from paceline_server.domain.errors import CurriculumExists
from support import SPEC

LP = {**SPEC, "sampler": "learning_progress"}


def stored_by_an_earlier_release(db: Path, change: Any) -> None:
    """Rewrite the stored spec as a release before `p_theta` existed stored it."""
    with sqlite3.connect(db) as conn:
        (text,) = conn.execute("SELECT spec FROM curricula WHERE name = 'math'").fetchone()
        spec = json.loads(text)
        change(spec["sampler"]["params"])
        conn.execute("UPDATE curricula SET spec = ? WHERE name = 'math'", (json.dumps(spec),))


def test_exist_ok_and_merge_after_a_parameter_was_added(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    service = populated(f"sqlite:///{db}", reports=3, spec=LP)
    stored_by_an_earlier_release(db, lambda params: params.pop("p_theta"))
    assert "p_theta" not in service.get_curriculum("math").spec["sampler"]["params"]
    again = service.create_curriculum(LP, exist_ok=True)
    assert not again.created and again.record.head_seq == 3
    lines = [orjson.loads(line) for line in export_curriculum(service, "math")]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    merged = import_curriculum(service, read_lines(data.splitlines()), merge=True)
    assert (merged.reports_added, merged.reports_present) == (0, 3)
    with pytest.raises(CurriculumExists) as other:  # a real difference is still one
        service.create_curriculum({**LP, "batch_size": 16}, exist_ok=True)
    assert other.value.details["differing"] == ["batch_size"]
    assert "(batch_size)" in other.value.message


def test_a_changed_default_is_a_different_spec_and_says_which(tmp_path: Path) -> None:
    """The stored curriculum keeps the value it was created with (its batches do not
    change under it); a request that leaves the parameter to today's default asks for
    another curriculum, and the refusal names the parameter to pin."""
    db = tmp_path / "c.db"
    service = populated(f"sqlite:///{db}", reports=1, spec=LP)
    stored_by_an_earlier_release(db, lambda params: params.update(p_theta=0.5))
    with pytest.raises(CurriculumExists) as changed:
        service.create_curriculum(LP, exist_ok=True)
    assert changed.value.details["differing"] == ["sampler.params.p_theta"]
    pinned = {**LP, "sampler": {"kind": "learning_progress", "p_theta": 0.5}}
    assert not service.create_curriculum(pinned, exist_ok=True).created


def test_spec_differences() -> None:
    assert spec_differences({"a": 1, "b": {"c": 2, "d": [1]}},
                            {"a": 1, "b": {"c": 3, "d": [1], "e": None}}) == ["b.c", "b.e"]
    assert spec_differences({"x": {"y": 1}}, {"x": 2}) == ["x"]
    assert spec_differences(SPEC, SPEC) == []


def test_a_spec_this_release_cannot_read_is_compared_as_stored() -> None:
    unreadable = {**SPEC, "sampler": {"kind": "retired_sampler", "params": {}}}
    assert effective_spec(unreadable) == unreadable
