"""The curriculum's current reward weights, for reward functions that run in another
process than the sampler (verl's reward workers, OpenRLHF's vLLM engines). Framework-free:
shared by the verl and OpenRLHF integrations.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from paceline.client import Client, Curriculum
from paceline.models import Batch, weights_view

__all__ = ["ServedWeights"]


class ServedWeights:
    """The curriculum's current reward weights, for reward functions that run in another
    process than the sampler (verl's reward workers): fetched from the service and cached
    for `ttl` seconds. They are the weights the sampler's batch was served with unless
    another run reported in between.

    ```python
    weights = ServedWeights.connect("math")          # once per worker process
    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        return weights.score({"correctness": ..., "length": ...})
    ```
    """

    def __init__(self, curriculum: Curriculum, ttl: float = 10.0) -> None:
        self.curriculum = curriculum
        self.ttl = ttl
        self._fetched = -float("inf")
        self._weights: dict[str, float] = {}
        self._scale = 1.0

    @classmethod
    def connect(cls, curriculum: str, url: str | None = None, token: str | None = None,
                ttl: float = 10.0) -> ServedWeights:
        return cls(Client(url, token=token).curriculum(curriculum), ttl)

    def get(self) -> tuple[dict[str, float], float]:
        """(weights by objective, reward scale), at most `ttl` seconds old."""
        now = time.monotonic()
        if now - self._fetched >= self.ttl:
            state = self.curriculum.state()
            self._weights, self._scale = dict(state.reward_weights), state.reward_scale
            self._fetched = now
        return self._weights, self._scale

    def view(self) -> Batch:
        """The weights of `get` as a batch-shaped view (`view().scalarize(...)`): fetch it
        once to score several rows alike (a group scored with two weight vectors, when
        the cache expires between its rows, compares rewards scalarised two ways)."""
        weights, scale = self.get()
        return weights_view(weights, scale, self.curriculum.spec)

    def score(self, rewards: Mapping[str, float]) -> dict[str, float]:
        """verl's reward-result dict: `score` = reward_scale * Σ_k w_k u_k (u_k: objective
        k by its bounds and direction, as `Batch.scalarize`), plus each objective's raw
        reward under its own name (verl passes those to `update`)."""
        view = self.view()
        total = float(view.scalarize(rewards))
        return {"score": total, **{o: float(rewards[o]) for o in view.reward_weights}}
