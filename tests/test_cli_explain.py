"""`paceline-server inspect` says why each distribution gets its probability: the
sentence under the table, then the numbers the sampler used."""

from __future__ import annotations

from pathlib import Path

from cli_support import populated, run
from support import SPEC


def test_inspect_prints_the_explanations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run("--database-url", url, "migrate")
    populated(url)
    out = run("--database-url", url, "inspect", "math")
    table, _, why = out.partition("\nwhy:\n")
    assert "easy" in table and why, out
    lines = why.strip("\n").splitlines()
    assert lines[0].startswith("  `easy` gets 60 % because sampling is uniform over indices "
                               "and it holds 60 of the 100 indices; its success is ")
    assert lines[1].split() == ["size=60", "data_share=0.6", lines[1].split()[2]]
    assert lines[1].split()[2].startswith("success=")
    assert lines[2].startswith("  `hard` gets 40 % because")


def test_inspect_explains_a_learning_sampler(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    run("--database-url", url, "migrate")
    populated(url, spec={**SPEC, "sampler": "dump_ucb"})
    why = run("--database-url", url, "inspect", "math").partition("\nwhy:\n")[2]
    assert "learnability (mean |A| over its last" in why
    assert "exploration_bonus=" in why and "ucb=" in why
