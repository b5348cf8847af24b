"""Finite arithmetic (issue 18, F3): what a report and a spec may carry is bounded
(`domain/validation.py`: MAX_VALUE, MAX_GRAD_PRODUCT, MAX_PARAM), and within those
bounds every strategy's state stays finite. Property: for every registered sampler and
weighting, any sequence of reports the engine accepts is followed by a batch, an
inspection and a snapshot that render (finite numbers), never an unexpected error (a 5xx).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_support import make_client
from paceline_server.api.routes import state_out
from paceline_server.domain import CurriculumSpec
from paceline_server.domain.errors import InvalidParams, InvalidReport, PacelineError
from paceline_server.domain.report import Report
from paceline_server.domain.validation import MAX_GRAD_PRODUCT, MAX_PARAM, MAX_VALUE
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.registry import available_samplers, available_weightings

OBJECTIVES = ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}]
LAYOUT = {"distributions": [{"name": "a", "size": 12}, {"name": "b", "size": 8},
                            {"name": "c", "size": 4}]}
K = 2

#: Parameters a strategy requires (everything else at its defaults).
REQUIRED: dict[str, dict[str, Any]] = {"fixed_mix": {"probabilities": [0.5, 0.3, 0.2]}}
COMBINATIONS = ([({"kind": s, **REQUIRED.get(s, {})}, "fixed") for s in available_samplers()]
                + [({"kind": "dump_ucb"}, w) for w in available_weightings() if w != "fixed"]
                + [({"kind": "dump_ucb", "c": MAX_PARAM}, "fixed"),
                   ({"kind": "spard", "per_sample": True, "loss_weights": True,
                     "initial_utility": MAX_PARAM}, "spard")])


def build(sampler: Any, weighting: Any) -> CurriculumEngine:
    spec = CurriculumSpec.from_dict({"name": "p", "layout": LAYOUT, "objectives": OBJECTIVES,
                                     "sampler": sampler, "weighting": weighting,
                                     "batch_size": 4, "seed": 3})
    return CurriculumEngine(spec)


edge = st.sampled_from([0.0, 1.0, -1.0, MAX_VALUE, -MAX_VALUE, 5e-324, 1e-300, 0.5])
value = st.one_of(edge, st.floats(-MAX_VALUE, MAX_VALUE, allow_nan=False))
gram = st.one_of(st.sampled_from([MAX_GRAD_PRODUCT, -MAX_GRAD_PRODUCT, 0.0]),
                 st.floats(-MAX_GRAD_PRODUCT, MAX_GRAD_PRODUCT, allow_nan=False))


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    g = draw(st.integers(1, 4))
    indices = draw(st.lists(st.integers(0, 23), min_size=n, max_size=n, unique=True))
    body: dict[str, Any] = {
        "indices": indices,
        "rewards": draw(st.lists(st.lists(st.lists(value, min_size=K, max_size=K),
                                          min_size=g, max_size=g), min_size=n, max_size=n))}
    if draw(st.booleans()):
        body["advantages"] = draw(st.lists(st.lists(value, min_size=g, max_size=g),
                                           min_size=n, max_size=n))
    if draw(st.booleans()):
        a, b, c = draw(gram), draw(gram), draw(gram)
        body["grad_products"] = [[a, b], [b, c]]
    if draw(st.booleans()):
        body["eval_objectives"] = draw(st.lists(value, min_size=K, max_size=K))
    return body


def finite_json(value: Any) -> None:
    """Renders as strict JSON (no NaN/Infinity), as the REST and gRPC answers must."""
    json.dumps(value, allow_nan=False, default=lambda v: v.tolist())


@pytest.mark.parametrize(("sampler", "weighting"), COMBINATIONS,
                         ids=[f"{s['kind']}{'-extreme' if i >= len(COMBINATIONS) - 2 else ''}"
                              f"+{w}" for i, (s, w) in enumerate(COMBINATIONS)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(reports(), min_size=1, max_size=4))
def test_accepted_reports_never_lead_to_an_error(sampler: Any, weighting: Any,
                                                 bodies: list[dict[str, Any]]) -> None:
    engine = build(sampler, weighting)
    refused: list[str] = []
    for step, body in enumerate(bodies):
        before = engine.to_bytes()
        try:
            report = Report.dense(run_id="r", step=step, layout=engine.layout,
                                  num_objectives=K, **body)
            engine.apply(report)
        except PacelineError as exc:  # refused (a 4xx): the state is untouched
            refused.append(exc.code)
            assert engine.to_bytes() == before
            continue
        batch = engine.next_batch("r", step + 1)
        assert np.all(np.isfinite(batch.reward_weights)) and math.isfinite(batch.reward_scale)
        assert np.all(np.isfinite(batch.probabilities))
        if batch.loss_weights is not None:
            assert np.all(np.isfinite(batch.loss_weights))
        finite_json(state_out("p", engine.inspect()).model_dump(mode="json"))
        assert CurriculumEngine.from_bytes(engine.spec, engine.to_bytes()).to_bytes() \
            == engine.to_bytes()
    assert all(code.startswith("INVALID") for code in refused), refused


# ------------------------------------------------------------------ the bounds themselves
@pytest.mark.parametrize("change", [
    {"advantages": [[1e308, -1e308]]}, {"advantages": [[MAX_VALUE * 2, 0.0]]},
    {"rewards": [[[1e7, 0], [0, 0]]]}, {"eval_objectives": [1e300, 0]},
    {"grad_products": [[1e13, 0], [0, 1]]},
], ids=["issue-advantages", "advantage", "reward", "eval", "grad-products"])
def test_values_beyond_the_bounds_are_refused(change: dict[str, Any]) -> None:
    engine = build("dump_ucb", "fixed")
    before = engine.to_bytes()
    body = {"indices": [0], "rewards": [[[1, 0], [0, 0]]], **change}
    with pytest.raises(InvalidReport, match=r"within|finite"):
        engine.apply(Report.dense(run_id="r", step=0, layout=engine.layout,
                                  num_objectives=K, **body))
    assert engine.to_bytes() == before


@pytest.mark.parametrize("sampler", [
    {"kind": "dump_ucb", "c": 1e308},
    {"kind": "spard", "per_sample": True, "loss_weights": True, "initial_utility": 1e308},
    {"kind": "dump_ucb", "window": 2**62},
], ids=["ucb-c", "spard-utility", "huge-int"])
def test_spec_parameters_beyond_the_bounds_are_refused(sampler: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        build(sampler, "fixed")


def test_objective_bounds_are_bounded() -> None:
    with pytest.raises(PacelineError, match="within"):
        CurriculumSpec.from_dict({"name": "p", "layout": LAYOUT, "objectives": [
            {"name": "len", "bounds": [0, 1e300]}], "batch_size": 4})


@pytest.fixture
def rest(tmp_path: Any) -> TestClient:
    return make_client(f"sqlite:///{tmp_path / 'f.db'}")


def test_the_issue_repro_is_refused_over_rest(rest: TestClient) -> None:
    """F3 over REST: the report (and the specs) of the issue are 422, and the curriculum
    keeps serving batches."""
    spec = {"name": "c", "layout": {"distributions": [{"name": "a", "size": 10},
                                                      {"name": "b", "size": 5}]},
            "objectives": ["acc"], "sampler": "dump_ucb", "batch_size": 2}
    assert rest.post("/v1/curricula", json=spec).status_code == 201
    assert rest.post("/v1/curricula/c/runs", json={"run_id": "r"}).status_code == 201
    batch = rest.post("/v1/curricula/c/batches", json={"run_id": "r", "step": 0}).json()
    bad = rest.post("/v1/curricula/c/reports", json={
        "run_id": "r", "step": 0, "indices": batch["indices"][:1], "rewards": [[1, 0]],
        "advantages": [[1e308, -1e308]]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_REPORT"
    for sampler in ({"kind": "dump_ucb", "c": 1e308},
                    {"kind": "spard", "per_sample": True, "loss_weights": True,
                     "initial_utility": 1e308}):
        refused = rest.post("/v1/curricula", json={**spec, "name": "d", "sampler": sampler})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "INVALID_PARAMS"
    assert rest.post("/v1/curricula/c/batches",
                     json={"run_id": "r", "step": 1}).status_code == 200
