"""A curriculum over time: what the engine decided and measured after each report.

`ProgressPoint` is one row (the state after folding report `seq`); `CurriculumHistory` a
column-per-series view over a range of rows, which is what the history endpoint, the
client's DataFrame and the dashboard's charts read. Arrays are [T] or [T, D] / [T, k] with
NaN where a value is unknown (a distribution not yet reported, no hypervolume kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProgressPoint:
    probabilities: np.ndarray  # float64 [D]: what the next batch would use
    success: np.ndarray  # float64 [D]: mean over the health window (NaN before any report)
    mean_abs_advantage: np.ndarray  # float64 [D]
    zero_variance: np.ndarray  # float64 [D]: share of all-equal groups over the window
    stalled: np.ndarray  # bool [D]
    saturated: np.ndarray  # bool [D]
    hopeless: np.ndarray  # bool [D]
    reward_weights: np.ndarray  # float64 [k]
    reward_scale: float
    hypervolume: float  # NaN when the weighting keeps no Pareto front


#: the per-distribution series of a history, in response order
DISTRIBUTION_SERIES = ("probability", "success", "mean_abs_advantage",
                       "zero_variance_fraction", "stalled", "saturated", "hopeless")


@dataclass(frozen=True)
class CurriculumHistory:
    name: str
    head_seq: int  # the curriculum's last report
    first_seq: int  # the earliest row the store can give (0, or a snapshot's seq when pruned)
    every: int  # downsampling used: rows at multiples of `every`, plus the last
    complete: bool  # False while a long replay is still under way (rows end earlier)
    replayed_seq: int  # the last report the rows reach (the head when complete)
    objectives: tuple[str, ...]
    distributions: tuple[str, ...]
    seq: np.ndarray  # int64 [T]
    step: np.ndarray  # int64 [T]: the trainer step of report `seq` (-1 for the start row)
    time: np.ndarray  # float64 [T]: when it was stored, seconds since the epoch
    series: dict[str, np.ndarray]  # DISTRIBUTION_SERIES -> [T, D] (float64 or bool)
    reward_weights: np.ndarray  # float64 [T, k]
    reward_scale: np.ndarray  # float64 [T]
    hypervolume: np.ndarray  # float64 [T]
