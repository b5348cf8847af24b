"""The curriculum gauges of /metrics: the numbers /state gives (probabilities, window
means, learning progress, health flags, reward weights and scale, hypervolume), for the
first `PACELINE_METRICS_MAX_DISTRIBUTIONS` distributions, read without building the
whole inspection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api_support import make_client
from paceline_server.api.app import create_app
from paceline_server.domain.errors import Unavailable
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.base import CurriculumWriter, Store

SPEC: dict[str, Any] = {
    "name": "g",
    "layout": {"distributions": [{"name": "easy", "size": 30}, {"name": "mid", "size": 30},
                                 {"name": "hard", "size": 30}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "weighting": "hypervolume",
    "batch_size": 12,
    "seed": 5,
}


def gauges(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "curriculum"))):
            s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.labels.get("curriculum") == "g"}


def train(client: TestClient, steps: int, sampler: str) -> None:
    spec = {**SPEC, "sampler": sampler}
    assert client.post("/v1/curricula", json=spec).status_code == 201
    assert client.post("/v1/curricula/g/runs", json={"run_id": "r"}).status_code == 201
    for step in range(steps):
        indices = client.post("/v1/curricula/g/batches",
                              json={"run_id": "r", "step": step}).json()["indices"]
        rewards = [[[float((i * 7 + j + step) % 3 == 0), float((i + j) % 50)]
                    for j in range(4)] for i in indices]
        ack = client.post("/v1/curricula/g/reports", json={
            "run_id": "r", "step": step, "indices": indices, "rewards": rewards})
        assert ack.status_code == 200, ack.text


@pytest.mark.parametrize("sampler", ["uniform", "learning_progress", "dump_ucb"])
def test_the_gauges_are_the_state_s_numbers(tmp_path: Path, sampler: str) -> None:
    with make_client(f"sqlite:///{tmp_path / 'g.db'}", metrics_max_distributions=2) as client:
        train(client, 6, sampler)
        shown = gauges(client)
        state = client.get("/v1/curricula/g/state").json()
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("paceline_curriculum_seq", ()): 6.0,
        ("paceline_reward_scale", ()): state["reward_scale"],
        ("paceline_hypervolume", ()): state["hypervolume_history"][-1]["hypervolume"],
    }
    for objective, weight in state["reward_weights"].items():
        expected[("paceline_reward_weight", (("objective", objective),))] = weight
    for d in state["distributions"][:2]:  # the limit
        at = (("distribution", d["name"]),)
        expected[("paceline_distribution_probability", at)] = d["probability"]
        expected[("paceline_distribution_learning_progress", at)] = d["learning_progress"]
        for series, key in (("success", "success"),
                            ("mean_abs_advantage", "mean_abs_advantage"),
                            ("zero_variance_fraction", "zero_variance_fraction")):
            if d[key] is not None:
                expected[(f"paceline_distribution_{series}", at)] = d[key]
        for flag in ("stalled", "saturated", "hopeless"):
            expected[("paceline_distribution_health", (*at, ("flag", flag)))] = \
                float(d["health"][flag])
    counters = {key for key in shown if key[0].endswith(("_total", "_created"))}
    assert {key: shown[key] for key in shown if key not in counters} == pytest.approx(expected)


def test_a_scrape_does_not_build_the_whole_inspection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`inspect` builds an object and an explanation for every distribution, under the
    engine's lock: about 0.2 s per scrape for a curriculum of 10,000 distributions, while
    its reports and batches waited, and some seconds for a cache of such curricula, past
    a scrape timeout. The gauges need arrays and the first N names only."""
    with make_client(f"sqlite:///{tmp_path / 'i.db'}") as client:
        train(client, 2, "uniform")

        def refused(self: CurriculumEngine) -> None:
            raise AssertionError("a scrape inspected the engine")

        monkeypatch.setattr(CurriculumEngine, "inspect", refused)
        scrape = client.get("/metrics")
        assert scrape.status_code == 200
        assert 'paceline_distribution_probability{curriculum="g",distribution="hard"}' \
            in scrape.text


class FailingCommits:
    """The real store, whose next commit fails on demand (a database that goes away
    mid-transaction)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fail_next = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @contextmanager
    def writer(self, name: str) -> Iterator[CurriculumWriter]:
        with self._store.writer(name) as writer:
            yield writer
            if self.fail_next:
                self.fail_next = False
                raise Unavailable("database unavailable: injected", {})


def test_an_engine_holding_a_report_that_did_not_commit_is_not_shown(
        tmp_path: Path) -> None:
    """A failed commit leaves the cached engine with the report folded (marked stale,
    reloaded from the log on next use); until then the gauges showed a state the log
    does not hold, at the seq of the one it does."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    store = FailingCommits(open_store(url, auto_migrate=True))
    app = create_app(Settings(database_url=url, auto_migrate=True), store)  # type: ignore[arg-type]
    with TestClient(app) as client:
        train(client, 1, "learning_progress")
        before = gauges(client)
        indices = client.post("/v1/curricula/g/batches",
                              json={"run_id": "r", "step": 1}).json()["indices"]
        body = {"run_id": "r", "step": 1, "indices": indices,
                "rewards": [[[1.0, 3.0]] * 4 for _ in indices]}
        store.fail_next = True
        assert client.post("/v1/curricula/g/reports", json=body).status_code == 503
        shown = gauges(client)
        assert all(shown[key] == before.get(key) for key in shown
                   if not key[0].endswith(("_total", "_created"))), "a state never committed"
        assert client.post("/v1/curricula/g/reports", json=body).status_code == 200
        assert gauges(client)[("paceline_curriculum_seq", ())] == 2.0
