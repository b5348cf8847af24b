"""Dynamic sampling over REST: refill parts of a served step (POST /batches with part),
reports that name their dropped groups, and the bad requests that change nothing."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from support import SPEC

URL = "/v1/curricula/math"


def setup(client: TestClient, **change: Any) -> None:
    assert client.post("/v1/curricula", json={**SPEC, **change}).status_code == 201
    assert client.post(f"{URL}/runs", json={"run_id": "r"}).status_code == 201


def ask(client: TestClient, step: int, part: int = 0, size: int | None = None) -> Any:
    body: dict[str, Any] = {"run_id": "r", "step": step, "part": part}
    if size is not None:
        body["size"] = size
    return client.post(f"{URL}/batches", json=body)


def rewards(indices: list[int], equal: set[int] = frozenset()) -> list[Any]:  # type: ignore[assignment]
    """[n, 4, 2]: groups of `equal` indices all-correct, the others mixed."""
    return [[[1.0 if i in equal or j % 2 else 0.0, 10.0] for j in range(4)] for i in indices]


def error_code(response: Any) -> str:
    return str(response.json()["error"]["code"])


def test_refill_parts_are_disjoint_deterministic_and_idempotent(client: TestClient) -> None:
    setup(client)
    first = ask(client, 0)
    assert first.status_code == 200 and first.json()["part"] == 0
    one = ask(client, 0, part=1, size=5)
    assert one.status_code == 200
    body = one.json()
    assert body["part"] == 1 and len(body["indices"]) == 5
    assert not set(body["indices"]) & set(first.json()["indices"])
    two = ask(client, 0, part=2, size=20).json()
    served = first.json()["indices"] + body["indices"] + two["indices"]
    assert len(served) == len(set(served)) == 33
    # the same (run, step, part) again is the same part; part 0 is unchanged
    assert ask(client, 0, part=1, size=5).json() == body
    assert ask(client, 0, part=1, size=8).status_code == 409  # another size: a conflict
    assert ask(client, 0, part=1).json() == body  # no size: the part as served
    assert ask(client, 0).json() == first.json()
    # a report may name indices of any part, and says which groups it dropped
    dropped = body["indices"][:2]
    report = {"run_id": "r", "step": 0, "indices": served,
              "rewards": rewards(served, set(dropped)), "dropped": dropped}
    ack = client.post(f"{URL}/reports", json=report)
    assert ack.status_code == 200, ack.text
    assert ack.json() == {"seq": 1, "replayed": False, "rollouts_generated": 33 * 4,
                          "rollouts_trained": 31 * 4, "groups_dropped": 2}
    state = client.get(f"{URL}/state").json()
    assert sum(d["rollouts"] for d in state["distributions"]) == 33 * 4  # all folded
    metrics = client.get("/metrics").text
    assert 'paceline_rollouts_total{curriculum="math",kind="generated"} 132.0' in metrics
    assert 'paceline_rollouts_total{curriculum="math",kind="trained"} 124.0' in metrics
    # the step is over: no more refills, but a retry of a served part still answers
    late = ask(client, 0, part=3, size=1)
    assert late.status_code == 409 and error_code(late) == "STEP_ALREADY_REPORTED"
    assert ask(client, 0, part=2, size=20).json() == two


def test_refill_follows_the_sampler_and_its_seed(tmp_path: Any) -> None:
    from api_support import make_client

    answers = []
    for attempt in range(2):
        url = f"sqlite:///{tmp_path / f'd{attempt}.db'}"
        with make_client(url) as client:
            setup(client, sampler={"kind": "fixed_mix", "probabilities": [0.0, 1.0]})
            ask(client, 0)
            answers.append(ask(client, 0, part=1, size=6).json()["indices"])
    assert answers[0] == answers[1]  # deterministic per (seed, run, step, part)
    assert all(i >= 60 for i in answers[0])  # "hard" only, as the sampler says


def test_refill_tops_up_when_the_sampler_repeats(sqlite_client: TestClient) -> None:
    """fixed_mix on a distribution smaller than its slots repeats indices: the refill is
    still `size` distinct unserved ones."""
    small = {"layout": {"distributions": [{"name": "easy", "size": 95},
                                          {"name": "hard", "size": 5}]},
             "sampler": {"kind": "fixed_mix", "probabilities": [0.0, 1.0]}}
    setup(sqlite_client, **small)
    first = ask(sqlite_client, 0).json()["indices"]
    part = ask(sqlite_client, 0, part=1, size=10).json()["indices"]
    assert len(set(part)) == 10 and not set(part) & set(first)


def test_top_ups_differ_from_run_to_run(sqlite_client: TestClient) -> None:
    """The top-up is drawn from the run's own stream: two runs whose sampler repeats (5
    "hard" prompts for 8 slots) are not handed the same easy prompts at a step (the
    stream was keyed by seed, step and part alone, so the runs shared them)."""
    small = {"layout": {"distributions": [{"name": "easy", "size": 95},
                                          {"name": "hard", "size": 5}]},
             "sampler": {"kind": "fixed_mix", "probabilities": [0.0, 1.0]}}
    setup(sqlite_client, **small)
    assert sqlite_client.post(f"{URL}/runs", json={"run_id": "s"}).status_code == 201
    top_ups = []
    for run in ("r", "s"):
        body = {"run_id": run, "step": 0}
        assert sqlite_client.post(f"{URL}/batches", json=body).status_code == 200
        part = sqlite_client.post(f"{URL}/batches", json={**body, "part": 1, "size": 10})
        top_ups.append({i for i in part.json()["indices"] if i < 95})  # easy: topped up
    assert min(map(len, top_ups)) >= 5  # the hard ones part 0 left, the rest easy
    assert len(top_ups[0] & top_ups[1]) <= 3  # (the same stream: all but one shared)


@pytest.mark.parametrize(
    ("request_body", "status", "code"),
    [({"part": 1, "size": 3}, 409, "REFILL_OUT_OF_ORDER"),  # no part 0 yet
     ({"part": 65, "size": 3}, 422, "INVALID_REQUEST"),
     ({"part": -1}, 422, None),
     ({"part": True}, 422, None)],
)
def test_bad_refills_before_part_zero(sqlite_client: TestClient, request_body: dict[str, Any],
                                      status: int, code: str | None) -> None:
    setup(sqlite_client)
    response = sqlite_client.post(f"{URL}/batches", json={"run_id": "r", "step": 0,
                                                         **request_body})
    assert response.status_code == status
    if code is not None:
        assert error_code(response) == code
    assert ask(sqlite_client, 0, part=1, size=3).status_code == 409  # nothing was stored


def test_bad_refills_change_nothing(client: TestClient) -> None:
    setup(client)
    first = ask(client, 0).json()
    skip = ask(client, 0, part=2, size=3)
    assert skip.status_code == 409 and error_code(skip) == "REFILL_OUT_OF_ORDER"
    too_many = ask(client, 0, part=1, size=93)  # 100 samples, 8 served
    assert too_many.status_code == 422 and error_code(too_many) == "REFILL_TOO_LARGE"
    assert too_many.json()["error"]["details"]["maximum"] == 92
    unknown_run = client.post(f"{URL}/batches", json={"run_id": "x", "step": 0, "part": 1})
    assert unknown_run.status_code == 404
    everything = ask(client, 0, part=1, size=92)  # exactly what is left: fine
    assert sorted(everything.json()["indices"] + first["indices"]) == list(range(100))
    assert ask(client, 0, part=2, size=1).status_code == 422  # nothing left


def test_reports_name_only_what_they_cover(sqlite_client: TestClient) -> None:
    setup(sqlite_client)
    indices = ask(sqlite_client, 0).json()["indices"]
    bad = [{"dropped": [indices[0], 1000]}, {"dropped": "x"}, {"dropped": [[1]]},
           {"dropped": [0.5]}]
    for extra in bad:
        response = sqlite_client.post(f"{URL}/reports", json={
            "run_id": "r", "step": 0, "indices": indices, "rewards": rewards(indices),
            **extra})
        assert response.status_code == 422 and error_code(response) == "INVALID_REPORT"
    assert sqlite_client.get(f"{URL}/state").json()["seq"] == 0
    # indices of a refill that was never asked for are not served
    foreign = sorted(set(range(100)) - set(indices))[:1]
    response = sqlite_client.post(f"{URL}/reports", json={
        "run_id": "r", "step": 0, "indices": indices + foreign,
        "rewards": rewards(indices + foreign)})
    assert response.status_code == 409 and error_code(response) == "INDICES_NOT_SERVED"
    # empty `dropped`: counted, nothing dropped
    ok = sqlite_client.post(f"{URL}/reports", json={
        "run_id": "r", "step": 0, "indices": indices, "rewards": rewards(indices),
        "dropped": []})
    assert ok.json()["groups_dropped"] == 0
    assert ok.json()["rollouts_trained"] == ok.json()["rollouts_generated"] == 32
