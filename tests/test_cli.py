"""The `paceline-server` command line: migrate, inspect, export/import, what-if replay."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from api_support import SPEC
from paceline_server.app.service import PacelineService
from paceline_server.cli import main
from paceline_server.settings import Settings
from paceline_server.store import open_store


def populated(url: str, reports: int = 12) -> PacelineService:
    service = PacelineService(open_store(url, auto_migrate=True),
                              Settings(database_url=url, snapshot_every=5))
    service.create_curriculum(SPEC)
    service.attach_run("math", run_id="run-1")
    rng = np.random.default_rng(0)
    for step in range(reports):
        batch = service.next_batch("math", "run-1", step)
        hard = batch.indices >= 60
        correct = rng.random((batch.indices.size, 4)) < np.where(hard, 0.1, 0.9)[:, None]
        rewards = np.stack([correct, np.full(correct.shape, 30.0)], axis=-1).astype(float)
        service.report("math", {"run_id": "run-1", "step": step,
                                "indices": batch.indices.tolist(),
                                "rewards": rewards.tolist()}, f"k{step}")
    return service


def run(*argv: str) -> str:
    out = io.StringIO()
    assert main(list(argv), out=out) == 0
    return out.getvalue()


def test_migrate_then_inspect(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run("--database-url", url, "migrate")
    populated(url)
    table = run("--database-url", url, "inspect", "math")
    assert "curriculum math  seq 12  sampler uniform  weighting fixed" in table
    assert "reward weights: acc=0.750, len=0.250" in table
    lines = {line.split()[0]: line for line in table.splitlines()[4:]}
    assert set(lines) == {"easy", "hard"}
    assert lines["easy"].split()[2] == "0.600"


def test_export_import_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    service = populated(url)
    exported = run("--database-url", url, "export", "math")
    lines = [json.loads(line) for line in exported.splitlines()]
    assert lines[0]["type"] == "curriculum"
    assert [x["type"] for x in lines[1:]] == ["run"] + ["report"] * 12
    path = tmp_path / "math.jsonl"
    path.write_text(exported)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert "imported 12 reports into copy" in run("--database-url", other, "import",
                                                  str(path), "--name", "copy")
    # Importing twice is a no-op: every report carries its idempotency key.
    run("--database-url", other, "import", str(path), "--name", "copy")
    copy = PacelineService(open_store(other), Settings(database_url=other)).engine("copy")
    assert copy.seq == 12
    original = service.engine("math").engine
    assert copy.engine.inspect().distributions == original.inspect().distributions


def test_replay_what_if(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url)
    text = run("--database-url", url, "replay", "math", "--sampler",
               '{"kind": "fixed_mix", "probabilities": [0.2, 0.8]}', "--every", "4")
    rows = [line.split() for line in text.splitlines()[2:]]
    assert [row[0] for row in rows] == ["0", "4", "8", "12"]
    assert all(float(row[1]) == pytest.approx(0.4) for row in rows)  # TV of .6/.4 vs .2/.8
    assert "0.600->0.200" in text


def test_errors_are_reported_with_their_code(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run("--database-url", url, "migrate")
    assert main(["--database-url", url, "inspect", "nope"], out=io.StringIO()) == 2
    assert "CURRICULUM_NOT_FOUND" in capsys.readouterr().err


def test_postgres_without_schema_refuses_to_start() -> None:
    from api_support import fresh_pg_schema
    from paceline_server.api.app import create_app
    from paceline_server.domain.errors import SchemaOutdated

    with fresh_pg_schema() as url, pytest.raises(SchemaOutdated, match="paceline-server migrate"):
        create_app(Settings(database_url=url))
