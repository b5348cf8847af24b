"""docs/plugins.md's example package works as the page says: installed through its
entry points (a dist-info on the path, as pip writes it), both strategies are listed
with their parameters, a curriculum runs with them in a service, snapshots round-trip,
and a bad parameter is refused naming it."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from paceline_server.app.service import PacelineService
from paceline_server.app.strategies import strategy_catalog
from paceline_server.domain.errors import InvalidParams
from paceline_server.settings import Settings
from paceline_server.store import open_store

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "least_visited.py").write_text(blocks("python")[0])
    toml = blocks("toml")[0]
    dist = tmp_path / "paceline_least_visited-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: paceline-least-visited\n"
                                   "Version: 0.1.0\n")
    groups = re.findall(r'\[project\.entry-points\."([^"]+)"\]\n(.*?)(?:\n\n|$)', toml,
                        flags=re.DOTALL)
    assert [g for g, _ in groups] == ["paceline.samplers", "paceline.weightings"]
    (dist / "entry_points.txt").write_text("".join(  # as pip writes TOML's entry points
        f"[{group}]\n{body.strip().replace(chr(34), '')}\n\n" for group, body in groups))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("least_visited", None)


def test_the_example_plugin_is_listed_and_runs(installed: Path, tmp_path: Path) -> None:
    catalog = strategy_catalog()
    sampler = next(s for s in catalog.samplers if s.name == "least_visited")
    weighting = next(w for w in catalog.weightings if w.name == "equal")
    assert (sampler.origin, sampler.error, weighting.origin) == ("plugin", None, "plugin")
    assert {p.name: p.default for p in sampler.params} == {
        "allocation": "multinomial", "power": 1.0, "floor": 0.05}
    assert sampler.description.startswith("Samples each distribution in proportion")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    service = PacelineService(open_store(url, auto_migrate=True),
                              Settings(database_url=url, snapshot_every=2))
    try:
        body = {"name": "lv", "layout": {"distributions": [{"name": "a", "size": 30},
                                                          {"name": "b", "size": 10}]},
                "objectives": ["acc", "len"], "batch_size": 8, "seed": 1,
                "sampler": {"kind": "least_visited", "power": 2},
                "weighting": {"kind": "equal"}}
        service.create_curriculum(body)
        service.attach_run("lv", run_id="r")
        for step in range(5):
            batch = service.next_batch("lv", "r", step)
            assert batch.reward_weights.tolist() == [0.5, 0.5]
            service.report("lv", {"run_id": "r", "step": step,
                                  "indices": batch.indices.tolist(),
                                  "rewards": np.ones((8, 2, 2)).tolist()})
        view = service.state("lv")
        service.engines.forget("lv")  # loaded again from its snapshot (seq 4) and seq 5
        assert service.state("lv").distributions == view.distributions
        with pytest.raises(InvalidParams, match="power must be non-negative"):
            service.create_curriculum({**body, "name": "bad",
                                       "sampler": {"kind": "least_visited", "power": -1}})
    finally:
        service.close()
        service.store.close()
