"""Typed models shared by every layer; no framework imports."""

from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import (
    IndexOutOfRange,
    InvalidParams,
    InvalidReport,
    InvalidRequest,
    InvalidSpec,
    PacelineError,
    StateCorrupt,
    UnknownStrategy,
)
from paceline_server.domain.inspection import (
    CurriculumInspection,
    DistributionStats,
    HealthFlags,
    HypervolumeRecord,
    WeightRecord,
)
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.report import Report
from paceline_server.domain.spec import (
    DEFAULT_SAMPLER,
    DEFAULT_WEIGHTING,
    CurriculumSpec,
    ObjectiveSpec,
    StrategySpec,
    ZeroVarianceSpec,
)

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_WEIGHTING",
    "Batch",
    "CurriculumInspection",
    "CurriculumSpec",
    "DatasetLayout",
    "DistributionStats",
    "HealthFlags",
    "HypervolumeRecord",
    "IndexOutOfRange",
    "InvalidParams",
    "InvalidReport",
    "InvalidRequest",
    "InvalidSpec",
    "ObjectiveSpec",
    "PacelineError",
    "Report",
    "StateCorrupt",
    "StrategySpec",
    "UnknownStrategy",
    "WeightRecord",
    "ZeroVarianceSpec",
]
