"""The code in README.md and docs/ (docs/integrations/ included) runs: every ```python block
is executed unless the line before its fence says otherwise,
so the examples cannot drift from the code.

The convention (also in docs/integrations.md, "Docs that run"): an HTML comment on the line
right before the opening fence,

- `<!-- doc-test: skip (why) -->`: not executed (a fragment, or it needs a GPU, a model
  or a framework the suite does not have);
- `<!-- doc-test: prelude=NAME -->`: executed after `PRELUDES[NAME]` below, which stands
  in for the trainer's own parts the example leaves to the reader (a dataset, a
  generate-and-score function);
- `<!-- doc-test: needs=MODULE -->`: executed where MODULE imports (a trainer framework
  `.ci/run` installs beside the extras, as verl), skipped with that reason elsewhere,
  as the suite's other tests of that framework are;
- nothing: executed as it is.

Shell blocks (```bash) are installation and operation commands: never executed here.
Each block runs in a fresh interpreter with `http://127.0.0.1:8000` pointing at a
service this test starts on a free port (SQLite in a temporary directory).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import free_port, running_service

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # trainer pages too
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"<!--\s*doc-test:\s*(skip|prelude=\w+|needs=[\w.]+)\b[^>]*-->")
DEFAULT_URL = "http://127.0.0.1:8000"

PRELUDES = {
    # docs/client.md: the trainer's parts of the loop, on a made-up dataset.
    "trainer": """
import numpy as np
num_steps = 3
dataset = [f"prompt {i}" for i in range(4800)]
_rng = np.random.default_rng(0)
def generate_and_score(prompts):
    return np.stack([_rng.integers(0, 2, (len(prompts), 4)),
                     _rng.integers(10, 900, (len(prompts), 4))], axis=-1).astype(float)
def grpo_advantages(scalar):
    scalar = np.asarray(scalar, dtype=float)
    centred = scalar - scalar.mean(axis=1, keepdims=True)
    return centred / (scalar.std(axis=1, keepdims=True) + 1e-4)
def train_step(prompts, advantages, loss_weights=None):
    assert len(prompts) == len(advantages)
""",
    # a URL for the reader's own (constructors connect to nothing until called)
    "url": """
import paceline
url = "http://127.0.0.1:8000"
""",
}
# docs/client.md's loop fragments: the trainer's parts and a run to call.
PRELUDES["run"] = PRELUDES["trainer"] + """
import paceline
run = paceline.Client("http://127.0.0.1:8000").create_curriculum(
    "docs-fragment", distributions={"easy": 4000, "hard": 800},
    objectives=["correctness", {"name": "length", "direction": "minimize",
                                "bounds": [0, 1024]}],
    batch_size=8, exist_ok=True).start_run(heartbeat_interval=None)
"""


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    code: str
    mark: str | None  # "skip", "prelude=NAME", "needs=MODULE" or None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def python_blocks() -> Iterator[Block]:
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) != "python":
                continue
            line = text.count("\n", 0, match.start()) + 1
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            found = MARK.search(before)
            yield Block(doc, line, match.group(2), found.group(1) if found else None)


BLOCKS = list(python_blocks())
RUN = [b for b in BLOCKS if b.mark != "skip"]


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("docs") / "paceline.db"
    with running_service(f"sqlite:///{db}", port=free_port(), graceful=True,
                         ready_within=120) as service:
        yield service.url


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_doc_block_runs(block: Block, service_url: str, tmp_path: Path) -> None:
    code = block.code
    if block.mark is not None and block.mark.startswith("needs="):
        module = block.mark.split("=", 1)[1]
        pytest.importorskip(module, reason=f"{block.id} needs {module} (.ci/run installs it)")
    if block.mark is not None and block.mark.startswith("prelude="):
        name = block.mark.split("=", 1)[1]
        assert name in PRELUDES, f"{block.id}: unknown prelude {name!r}"
        code = PRELUDES[name] + "\n" + code
    code = code.replace(DEFAULT_URL, service_url)
    env = {**os.environ, "PACELINE_URL": service_url}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block.id} failed:\n{done.stderr[-3000:]}"


def test_every_python_block_is_run_or_marked() -> None:
    """A block is either executed or carries a skip mark with its reason: none is left out
    silently, and a mark names a prelude that exists."""
    assert RUN, "no runnable block found"
    for block in BLOCKS:
        if block.mark is not None and block.mark.startswith("prelude="):
            assert block.mark.split("=", 1)[1] in PRELUDES, block.id
    assert any(b.doc.name == "README.md" for b in RUN)
    pages = {b.doc.name for b in RUN if b.doc.parent.name == "integrations"}
    assert pages >= {"verl.md", "openrlhf.md", "torch.md"}, pages
