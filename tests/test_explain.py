"""Every built-in sampler explains each distribution's probability (terms + sentence, the
same probability inspect shows); a plug-in gets the default from `describe`; shares in
sentences read naturally."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from paceline_server.domain import CurriculumSpec, Report
from paceline_server.domain.explanation import percent
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies import registry
from paceline_server.strategies.base import ProposeContext
from paceline_server.strategies.distribution import DistributionParams, DistributionSampler

SAMPLERS: list[Any] = [
    "uniform", {"kind": "fixed_mix", "probabilities": {"easy": 0.7, "hard": 0.3}},
    "temperature", {"kind": "temperature", "mode": "upweight"}, "dump_ucb",
    "learning_progress", "prioritized", "spard", "learnability"]


def engine(sampler: Any, reports: int = 30) -> CurriculumEngine:
    spec = CurriculumSpec.from_dict({
        "name": "x", "batch_size": 16, "seed": 2, "sampler": sampler, "weighting": "fixed",
        "layout": {"distributions": [{"name": "easy", "size": 60}, {"name": "hard", "size": 40}]},
        "objectives": ["acc"]})
    e = CurriculumEngine(spec)
    rng = np.random.default_rng(0)
    for step in range(reports):
        batch = e.next_batch("r", step)
        hard = batch.indices >= 60
        rewards = np.where(hard[:, None], 0.0, rng.random((hard.size, 4)) < 0.8)
        e.apply(Report.dense(run_id="r", step=step, indices=batch.indices,
                             rewards=rewards[..., None].astype(float), layout=e.layout,
                             num_objectives=1))
    return e


@pytest.mark.parametrize("sampler", SAMPLERS,
                         ids=lambda s: s if isinstance(s, str) else str(s.get("mode", s["kind"])))
def test_every_builtin_sampler_explains(sampler: Any) -> None:
    e = engine(sampler)
    view = e.inspect()
    assert [x.name for x in view.explanations] == ["easy", "hard"]
    for stats, x in zip(view.distributions, view.explanations, strict=True):
        assert x.probability == pytest.approx(stats.probability)
        assert x.sentence.startswith(f"`{stats.name}` gets {percent(stats.probability)} "
                                     "because ")
        assert x.sentence.endswith(".") and x.terms
        assert all(v is None or np.isfinite(v) for v in x.terms.values())
        assert x.terms["success"] == pytest.approx(stats.success)
    assert sum(x.probability for x in view.explanations) == pytest.approx(1.0)
    assert e.explain() == view.explanations


def test_explain_before_any_report() -> None:
    fresh = engine("dump_ucb", reports=0)
    sentences = [x.sentence for x in fresh.explain()]
    assert all("never reported" in s for s in sentences)
    assert all("success" not in x.terms for x in fresh.explain())


@dataclass(frozen=True)
class _Params(DistributionParams):
    pass


@dataclass
class _State:
    pass


class DescribedSampler(DistributionSampler[_State, _Params]):
    """A plug-in that writes no `explain`: the default reads its `describe`."""

    name = "described_only"
    params_type = _Params
    state_type = _State

    def init_state(self, rng: np.random.Generator) -> _State:
        return _State()

    def update(self, state: _State, signals: Any, ctx: Any) -> None:
        return None

    def probabilities(self, state: _State, ctx: ProposeContext) -> np.ndarray:
        return np.array([0.25, 0.75])

    def describe(self, state: _State) -> dict[str, Any]:
        return {"score": [1.0, 3.0], "label": "not a column", "gaps": [None, 2]}


def test_default_explanation_reads_describe() -> None:
    registry.register_sampler(DescribedSampler)
    try:
        e = engine("described_only", reports=2)
    finally:
        registry._registered_samplers.pop(DescribedSampler.name, None)
    easy, hard = e.explain()
    assert easy.terms["score"] == 1.0 and easy.terms["gaps"] is None
    assert "label" not in easy.terms
    assert hard.sentence.startswith("`hard` gets 75 % because the described_only sampler "
                                    "sets it from score 3, gaps 2")


@pytest.mark.parametrize(("p", "text"), [(0.5, "50 %"), (0.04, "4.0 %"), (0.0004, "< 0.1 %"),
                                         (0.0, "0 %"), (0.999, "100 %")])
def test_percent(p: float, text: str) -> None:
    assert percent(p) == text
