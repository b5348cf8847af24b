"""The learner suite: structurally different simulated GRPO learners that no strategy
was tuned on (issue 14). One module per learner; `benchmarks/suite.py` runs them all."""

from __future__ import annotations

from .base import Dist, Groups, GrpoLearner
from .forgetting import ForgettingLearner
from .imbalanced import ImbalancedLearner
from .prerequisite import PrerequisiteLearner
from .tight_budget import TightBudgetLearner

LEARNERS: dict[str, type[GrpoLearner]] = {
    cls.name: cls for cls in (ImbalancedLearner, PrerequisiteLearner, ForgettingLearner,
                              TightBudgetLearner)
}

__all__ = [
    "LEARNERS",
    "Dist",
    "ForgettingLearner",
    "Groups",
    "GrpoLearner",
    "ImbalancedLearner",
    "PrerequisiteLearner",
    "TightBudgetLearner",
]
