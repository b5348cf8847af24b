"""The README's first lines give a newcomer two commands; CI (`.ci/run`) must run the same
test command, or the README's promise and CI drift apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_a_serve_and_a_test_command() -> None:
    serve, test = first_commands()
    assert "pip install -e ." in serve and "paceline-server serve" in serve
    assert "python -m pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    _, test = first_commands()
    pytest_call = re.search(r"python -m pytest[^#&]*", test)
    assert pytest_call is not None
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert pytest_call.group(0).strip() in [line.strip() for line in ci]
    extras = re.search(r"pip install -e '(\.\[[^\]]+\])' (torch==[\d.]+)", test)
    assert extras is not None
    assert any(extras.group(1) in line and extras.group(2) in line for line in ci)
