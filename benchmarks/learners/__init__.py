"""The learner suite: structurally different simulated GRPO learners that no strategy
was tuned on (issue 14). One module per learner; `benchmarks/suite.py` runs them all."""

from __future__ import annotations

from typing import Any

from .adam_features import AdamFeaturesLearner
from .base import Dist, Groups, GrpoLearner
from .cold_start import ColdStartLearner
from .forgetting import ForgettingLearner
from .imbalanced import ImbalancedLearner
from .interference import InterferenceLearner
from .latent_skills import LatentSkillsLearner
from .many_sources import ManySourcesLearner
from .memorization import MemorizationLearner
from .one_dataset import OneDatasetLearner
from .overfitting import OverfittingLearner
from .prerequisite import PrerequisiteLearner
from .reward_model import RewardModelLearner
from .tight_budget import TightBudgetLearner

LEARNERS: dict[str, type[GrpoLearner]] = {
    cls.name: cls for cls in (ImbalancedLearner, PrerequisiteLearner, ForgettingLearner,
                              TightBudgetLearner, MemorizationLearner,
                              LatentSkillsLearner, OneDatasetLearner,
                              InterferenceLearner, OverfittingLearner,
                              ManySourcesLearner, RewardModelLearner,
                              ColdStartLearner, AdamFeaturesLearner)
}
#: Learners run only when named (`--learners`): the example trainer needs torch and
#: about a minute per run.
REAL_LEARNERS = ("example_trainer",)


def learner_class(name: str) -> Any:
    """The learner class of `name`; the example trainer is imported only when asked for
    (it needs torch)."""
    if name == "example_trainer":
        from .example_trainer import ExampleTrainerLearner
        return ExampleTrainerLearner
    return LEARNERS[name]

__all__ = [
    "LEARNERS",
    "REAL_LEARNERS",
    "AdamFeaturesLearner",
    "ColdStartLearner",
    "Dist",
    "ForgettingLearner",
    "Groups",
    "GrpoLearner",
    "ImbalancedLearner",
    "InterferenceLearner",
    "LatentSkillsLearner",
    "ManySourcesLearner",
    "MemorizationLearner",
    "OneDatasetLearner",
    "OverfittingLearner",
    "PrerequisiteLearner",
    "RewardModelLearner",
    "TightBudgetLearner",
    "learner_class",
]
