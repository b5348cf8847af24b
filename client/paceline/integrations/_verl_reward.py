"""Where a single objective's raw reward is in a verl rollout: one definition for the
verl hooks (`verl`/`verl09`'s sampler, `verl_v1`'s replay buffer). Framework-free.

verl's reward managers call the reward function (`compute_score`) and keep what it
returned in the rollout's reward extra info: a dict result's keys (its `score` among
them), a float result under `acc`. The sequence score (`rm_scores`, trained on as
`token_level_scores`) is that score after the manager's own shaping: the DAPO manager
adds its overlong-buffer penalty (`overlong_buffer.enable`) there. So the reward
function's value comes from the extra info, and the sequence score only where the
manager kept neither key (a reward model's score; verl 0.5/0.6's naive manager with a
float result, which it does not shape).
"""

from __future__ import annotations

from collections.abc import Container

__all__ = ["RAW_SCORE_KEYS", "raw_score_key"]

#: The extra-info keys of the reward function's own score, in the order looked up.
RAW_SCORE_KEYS = ("score", "acc")


def raw_score_key(keys: Container[str]) -> str | None:
    """The key among `keys` holding the reward function's own score, if any."""
    return next((k for k in RAW_SCORE_KEYS if k in keys), None)
