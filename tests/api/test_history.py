"""GET /v1/curricula/{name}/history: per-report series rebuilt from the event log, its
downsampling, its agreement with /state and with an offline replay, pruned logs, bad
input; and the explanations /state carries."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.app import history as history_module
from paceline_server.app.codec import decode_report
from paceline_server.app.history import MAX_POINTS, HistoryService, auto_every
from paceline_server.domain import CurriculumSpec
from paceline_server.engine import CurriculumEngine

SPEC: dict[str, Any] = {
    "name": "hist",
    "layout": {"distributions": [{"name": "easy", "size": 40}, {"name": "mid", "size": 30},
                                 {"name": "hard", "size": 30}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "dump_ucb",
    "weighting": "hypervolume",
    "batch_size": 8,
    "seed": 3,
}
PASS_RATE = {"easy": 0.9, "mid": 0.5, "hard": 0.0}


def drive(client: TestClient, reports: int, start: int = 0, name: str = "hist",
          run: str = "r1") -> None:
    """`reports` steps of a toy trainer: served batch, rewards by difficulty, report."""
    rng = np.random.default_rng(start)
    for step in range(start, start + reports):
        batch = client.post(f"/v1/curricula/{name}/batches",
                            json={"run_id": run, "step": step}).json()
        bounds = np.cumsum([40, 30, 30])
        rate = np.array([PASS_RATE[n] for n in ("easy", "mid", "hard")])
        owner = np.searchsorted(bounds, np.asarray(batch["indices"]), side="right")
        acc = (rng.random((len(owner), 4)) < rate[owner][:, None]).astype(float)
        length = rng.integers(10, 90, size=(len(owner), 4)).astype(float)
        rewards = np.stack([acc, length], axis=-1).tolist()
        answer = client.post(f"/v1/curricula/{name}/reports",
                             headers={"Idempotency-Key": f"{run}/{step}"},
                             json={"run_id": run, "step": step, "indices": batch["indices"],
                                   "rewards": rewards})
        assert answer.status_code == 200, answer.text


def setup(client: TestClient, spec: dict[str, Any] | None = None) -> None:
    assert client.post("/v1/curricula", json=spec or SPEC).status_code == 201
    name = (spec or SPEC)["name"]
    assert client.post(f"/v1/curricula/{name}/runs", json={"run_id": "r1"}).status_code == 201


def replayed(client: TestClient, name: str, upto: int) -> CurriculumEngine:
    """A fresh engine folding the stored reports 1..upto (what the history should show)."""
    service = client.app.state.service  # type: ignore[attr-defined]
    engine = CurriculumEngine(CurriculumSpec.from_dict(service.get_curriculum(name).spec))
    for event in service.store.events(name, after_seq=0, limit=upto):
        engine.apply(decode_report(event.payload))
    return engine


def test_history_rows_match_state_and_replay(client: TestClient) -> None:
    setup(client)
    drive(client, 12)
    answer = client.get("/v1/curricula/hist/history")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["head_seq"] == 12 and body["first_seq"] == 0 and body["every"] == 1
    assert body["seq"] == list(range(13)) and body["step"] == [-1, *range(12)]
    assert body["distributions"] == ["easy", "mid", "hard"]
    assert body["objectives"] == ["acc", "len"]
    assert all(b >= a for a, b in zip(body["time"], body["time"][1:], strict=False))
    per = body["per_distribution"]
    probabilities = np.array([per[d]["probability"] for d in body["distributions"]])
    assert np.allclose(probabilities.sum(axis=0), 1.0)
    assert per["easy"]["success"][0] is None  # nothing reported before seq 1
    # the last row is what /state says now
    state = client.get("/v1/curricula/hist/state").json()
    for d in state["distributions"]:
        assert per[d["name"]]["probability"][-1] == pytest.approx(d["probability"])
        assert per[d["name"]]["success"][-1] == pytest.approx(d["success"])
        assert per[d["name"]]["mean_abs_advantage"][-1] == pytest.approx(
            d["mean_abs_advantage"])
        assert per[d["name"]]["zero_variance_fraction"][-1] == pytest.approx(
            d["zero_variance_fraction"])
        for flag in ("stalled", "saturated", "hopeless"):
            assert per[d["name"]][flag][-1] == d["health"][flag]
    for objective, weight in state["reward_weights"].items():
        assert body["reward_weights"][objective][-1] == pytest.approx(weight)
    assert body["reward_scale"][-1] == pytest.approx(state["reward_scale"])
    assert body["hypervolume"][-1] == pytest.approx(
        state["hypervolume_history"][-1]["hypervolume"])
    # a middle row is the state after folding the first 5 reports
    point = replayed(client, "hist", 5).progress()
    assert [per[d]["probability"][5] for d in body["distributions"]] == pytest.approx(
        point.probabilities.tolist())
    assert [body["reward_weights"][o][5] for o in body["objectives"]] == pytest.approx(
        point.reward_weights.tolist())


def test_downsampling_and_incremental_fold(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 10)
    body = client.get("/v1/curricula/hist/history", params={"every": 4}).json()
    assert body["seq"] == [0, 4, 8, 10] and body["every"] == 4  # the head is always there
    body = client.get("/v1/curricula/hist/history", params={"every": 3, "since": 4}).json()
    assert body["seq"] == [6, 9, 10]
    body = client.get("/v1/curricula/hist/history", params={"since": 10}).json()
    assert body["seq"] == [10]
    # reports committed after the first request are folded into the cached history
    drive(client, 5, start=10)
    body = client.get("/v1/curricula/hist/history").json()
    assert body["seq"] == list(range(16)) and body["head_seq"] == 15
    # ... and give what a fresh replay of the whole log gives
    service = client.app.state.service  # type: ignore[attr-defined]
    fresh = HistoryService(service.store).history("hist")
    hard = body["per_distribution"]["hard"]
    assert np.allclose(np.array(hard["probability"]),
                       fresh.series["probability"][:, 2])
    assert hard["hopeless"] == fresh.series["hopeless"][:, 2].tolist()


def test_default_every_caps_the_rows() -> None:
    assert auto_every(10) == 1
    assert auto_every(MAX_POINTS) == 1
    assert auto_every(MAX_POINTS + 1) == 2
    assert auto_every(100_000) == 100


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"since": 99}, 422, "HISTORY_OUT_OF_RANGE"),
    ({"since": -1}, 422, "HISTORY_OUT_OF_RANGE"),
    ({"every": 0}, 422, "INVALID_DOWNSAMPLING"),
    ({"every": -2}, 422, "INVALID_DOWNSAMPLING"),
    ({"every": 2**53 + 1}, 422, "INVALID_DOWNSAMPLING"),
    ({"every": 2**70}, 422, "INVALID_DOWNSAMPLING"),
])
def test_bad_history_requests(sqlite_client: TestClient, params: dict[str, int], status: int,
                              code: str) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 3)
    before = client.get("/v1/curricula/hist/state").json()
    answer = client.get("/v1/curricula/hist/history", params=params)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert client.get("/v1/curricula/hist/state").json() == before


def test_unknown_curriculum_history(sqlite_client: TestClient) -> None:
    answer = sqlite_client.get("/v1/curricula/nope/history")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "CURRICULUM_NOT_FOUND"


def test_history_of_a_pruned_log_starts_at_a_snapshot(tmp_path: Any) -> None:
    with make_client(f"sqlite:///{tmp_path / 'p.db'}", snapshot_every=4,
                     prune_events=True) as client:
        setup(client)
        drive(client, 10)
        body = client.get("/v1/curricula/hist/history").json()
        assert body["first_seq"] == 8 and body["seq"] == [8, 9, 10]
        state = client.get("/v1/curricula/hist/state").json()
        for d in state["distributions"]:
            assert body["per_distribution"][d["name"]]["probability"][-1] == pytest.approx(
                d["probability"])
        answer = client.get("/v1/curricula/hist/history", params={"since": 2})
        assert answer.json()["seq"] == [8, 9, 10]  # what the store still holds


def test_history_needs_a_read_token(tmp_path: Any) -> None:
    with make_client(f"sqlite:///{tmp_path / 'a.db'}",
                     api_tokens={"w": "write", "r": "read"}) as client:
        write = {"Authorization": "Bearer w"}
        assert client.post("/v1/curricula", json=SPEC, headers=write).status_code == 201
        assert client.get("/v1/curricula/hist/history").status_code == 401
        answer = client.get("/v1/curricula/hist/history",
                            headers={"Authorization": "Bearer r"})
        assert answer.status_code == 200 and answer.json()["seq"] == [0]


def test_state_explains_each_probability(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 40)
    state = client.get("/v1/curricula/hist/state").json()
    explanations = {e["name"]: e for e in state["explanations"]}
    assert list(explanations) == ["easy", "mid", "hard"]
    for d in state["distributions"]:
        e = explanations[d["name"]]
        assert e["probability"] == pytest.approx(d["probability"])
        assert e["sentence"].startswith(f"`{d['name']}` gets ")
        ucb = e["terms"]["learnability"] + e["terms"]["exploration_bonus"]
        assert e["terms"]["ucb"] == pytest.approx(ucb)
        assert e["terms"]["learnability"] == pytest.approx(
            state["sampler"]["learnability"][state["distributions"].index(d)])
    assert "learnability" in explanations["easy"]["sentence"]


def test_explanation_names_the_health_flag(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client, {**SPEC, "name": "flat", "sampler": "uniform", "batch_size": 32})
    drive(client, 25, name="flat")
    state = client.get("/v1/curricula/flat/state").json()
    hard = state["explanations"][2]
    assert state["distributions"][2]["health"]["hopeless"]
    assert hard["flags"] == ["hopeless"] and hard["sentence"].endswith("flagged hopeless.")
    assert "success is 0.00" in hard["sentence"] and "30 of the 100 indices" in hard["sentence"]
    assert hard["terms"]["data_share"] == pytest.approx(0.3)
    assert state["explanations"][0]["flags"] == []


class _HeldStore:
    """A store whose event reads wait until released: a replay that takes long."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.release = threading.Event()

    def events(self, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(10)
        return self._store.events(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_long_replay_answers_with_what_it_has(sqlite_client: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 9)
    monkeypatch.setattr(history_module, "INLINE_FOLDS", 2)  # 9 reports: a background replay
    monkeypatch.setattr(history_module, "CHUNK", 4)
    service = client.app.state.service  # type: ignore[attr-defined]
    held = _HeldStore(service.store)
    histories = HistoryService(held)  # type: ignore[arg-type]
    partial = histories.history("hist", wait_s=0.05)
    assert not partial.complete and partial.replayed_seq == 0 and partial.head_seq == 9
    assert partial.seq.tolist() == [0]
    assert histories.history("hist", since=5, wait_s=0.0).seq.tolist() == []
    held.release.set()
    done = histories.history("hist", wait_s=None)
    assert done.complete and done.replayed_seq == 9 and done.seq.tolist() == list(range(10))
    inline = HistoryService(service.store).history("hist")
    assert np.array_equal(done.series["probability"], inline.series["probability"])
    assert np.array_equal(done.reward_weights, inline.reward_weights)
    body = client.get("/v1/curricula/hist/history").json()
    assert body["complete"] is True and body["replayed_seq"] == 9


def test_a_deleted_curriculum_leaves_no_history(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 3)
    assert client.get("/v1/curricula/hist/history").json()["seq"] == [0, 1, 2, 3]
    service = client.app.state.service  # type: ignore[attr-defined]
    assert "hist" in service.histories._traces
    assert client.delete("/v1/curricula/hist", params={"confirm": "hist"}).status_code == 204
    assert "hist" not in service.histories._traces
    assert client.get("/v1/curricula/hist/history").status_code == 404
    setup(client)  # the same name again: a new curriculum, a new history
    assert client.get("/v1/curricula/hist/history").json()["seq"] == [0]
