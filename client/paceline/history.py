"""A curriculum's history as the service sends it (one column per series), and the two
shapes pandas takes in one line:

    pandas.DataFrame(cur.history().records())   # long: a row per (seq, distribution)
    pandas.DataFrame(cur.history().columns())   # wide: a row per seq
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from paceline.models import _Model

__all__ = ["DistributionHistory", "History"]

#: seconds between asks while the service is still replaying a long log
POLL_S = 0.25
#: the per-distribution series, in the order records and columns list them
SERIES = ("probability", "success", "mean_abs_advantage", "zero_variance_fraction",
          "stalled", "saturated", "hopeless")


class DistributionHistory(_Model):
    probability: list[float]
    success: list[float | None]  # None before the distribution's first report
    mean_abs_advantage: list[float | None]
    zero_variance_fraction: list[float | None]
    stalled: list[bool]
    saturated: list[bool]
    hopeless: list[bool]


class History(_Model):
    """Row i is the curriculum after report `seq[i]` (seq 0: before any report).

    `every` is the downsampling the service used (rows at its multiples, plus the last);
    `complete` is False only when asked with `wait=False` while the service was still
    replaying a long log (the rows then end at `replayed_seq`)."""

    name: str
    head_seq: int
    first_seq: int
    every: int
    complete: bool = True
    replayed_seq: int = 0
    objectives: list[str]
    distributions: list[str]
    seq: list[int]
    step: list[int]  # the report's trainer step (-1 for the start row)
    time: list[float]  # when it was stored, seconds since the epoch
    per_distribution: dict[str, DistributionHistory]
    reward_weights: dict[str, list[float]]
    reward_scale: list[float]
    hypervolume: list[float | None] = Field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seq)

    def columns(self) -> dict[str, list[Any]]:
        """Wide: seq, step, time, reward_scale, hypervolume, `weight/<objective>` and
        `<series>/<distribution>` (e.g. `probability/hard`), one value per row."""
        out: dict[str, list[Any]] = {"seq": self.seq, "step": self.step, "time": self.time,
                                     "reward_scale": self.reward_scale,
                                     "hypervolume": self.hypervolume}
        for objective, values in self.reward_weights.items():
            out[f"weight/{objective}"] = values
        for name in self.distributions:
            series = self.per_distribution[name]
            for key in SERIES:
                out[f"{key}/{name}"] = getattr(series, key)
        return out

    def records(self) -> list[dict[str, Any]]:
        """Long: one flat dict per (seq, distribution) with that distribution's series and
        the curriculum-wide ones (`weight/<objective>`, reward_scale, hypervolume)."""
        rows = []
        for i, seq in enumerate(self.seq):
            shared: dict[str, Any] = {"seq": seq, "step": self.step[i], "time": self.time[i],
                                      "reward_scale": self.reward_scale[i],
                                      "hypervolume": self.hypervolume[i]}
            for objective, values in self.reward_weights.items():
                shared[f"weight/{objective}"] = values[i]
            for name in self.distributions:
                series = self.per_distribution[name]
                rows.append({**shared, "distribution": name,
                             **{key: getattr(series, key)[i] for key in SERIES}})
        return rows
