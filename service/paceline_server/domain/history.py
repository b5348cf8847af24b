"""A curriculum over time: what the engine decided and measured after each report.

`ProgressPoint` is one row (the state after folding report `seq`); `CurriculumHistory` a
column-per-series view over a range of rows, which is what the history endpoint, the
client's DataFrame and the dashboard's charts read. Arrays are [T] or [T, D] / [T, k] with
NaN where a value is unknown (a distribution not yet reported, no hypervolume kept).
"""

from __future__ import annotations

import math
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


def point_series(point: ProgressPoint) -> dict[str, np.ndarray]:
    """The row's per-distribution values by series name (`DISTRIBUTION_SERIES` order)."""
    return {"probability": point.probabilities, "success": point.success,
            "mean_abs_advantage": point.mean_abs_advantage,
            "zero_variance_fraction": point.zero_variance, "stalled": point.stalled,
            "saturated": point.saturated, "hopeless": point.hopeless}


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


@dataclass(frozen=True)
class RowChunk:
    """Consecutive history rows, seq first_seq, first_seq + 1, ..., as columns: what a
    history checkpoint stores (the store keeps the packed bytes, `pack_rows`)."""

    first_seq: int
    step: np.ndarray  # int64 [n]
    time: np.ndarray  # float64 [n]
    series: dict[str, np.ndarray]  # DISTRIBUTION_SERIES -> [n, D]
    reward_weights: np.ndarray  # float64 [n, k]
    reward_scale: np.ndarray  # float64 [n]
    hypervolume: np.ndarray  # float64 [n]

    @property
    def last_seq(self) -> int:
        return self.first_seq + int(self.step.size) - 1


#: leads packed rows: format version, first_seq, n, D, k (int64 each)
_HEADER = np.dtype("<i8")
_ROWS_FORMAT = 1
_FLAG_SERIES = frozenset({"stalled", "saturated", "hopeless"})


def _layout(n: int, d: int, k: int) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    float64, int64, flag = np.dtype("<f8"), np.dtype("<i8"), np.dtype("u1")
    return [("step", int64, (n,)), ("time", float64, (n,)),
            *[(name, flag if name in _FLAG_SERIES else float64, (n, d))
              for name in DISTRIBUTION_SERIES],
            ("reward_weights", float64, (n, k)), ("reward_scale", float64, (n,)),
            ("hypervolume", float64, (n,))]


def pack_rows(chunk: RowChunk) -> bytes:
    """Rows as raw little-endian arrays behind a 40-byte header: 8·(4D + k + 4) + 3D
    bytes per row, decoded by `unpack_rows` without copying (np.frombuffer)."""
    n = int(chunk.step.size)
    d = int(chunk.series["probability"].shape[1])
    k = int(chunk.reward_weights.shape[1])
    columns = {"step": chunk.step, "time": chunk.time, **chunk.series,
               "reward_weights": chunk.reward_weights, "reward_scale": chunk.reward_scale,
               "hypervolume": chunk.hypervolume}
    parts = [np.asarray([_ROWS_FORMAT, chunk.first_seq, n, d, k], dtype=_HEADER).tobytes()]
    for name, dtype, shape in _layout(n, d, k):
        parts.append(np.ascontiguousarray(columns[name], dtype=dtype).reshape(shape).tobytes())
    return b"".join(parts)


def unpack_rows(data: bytes) -> RowChunk:
    """The chunk `pack_rows` wrote; ValueError when the bytes are not one."""
    header = np.frombuffer(data, dtype=_HEADER, count=5) if len(data) >= 40 else None
    if header is None or int(header[0]) != _ROWS_FORMAT:
        raise ValueError("not packed history rows (or of an unknown format)")
    first_seq, n, d, k = (int(v) for v in header[1:])
    layout = _layout(n, d, k)
    size = 40 + sum(dtype.itemsize * math.prod(shape) for _, dtype, shape in layout)
    if min(n, d, k) < 0 or len(data) != size:
        raise ValueError(f"packed history rows of {len(data)} bytes, expected {size}")
    columns: dict[str, np.ndarray] = {}
    offset = 40
    for name, dtype, shape in layout:
        count = math.prod(shape)
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        columns[name] = array.astype(bool) if name in _FLAG_SERIES else array
        offset += count * dtype.itemsize
    return RowChunk(first_seq=first_seq, step=columns.pop("step"), time=columns.pop("time"),
                    series={name: columns.pop(name) for name in DISTRIBUTION_SERIES},
                    reward_weights=columns.pop("reward_weights"),
                    reward_scale=columns.pop("reward_scale"),
                    hypervolume=columns.pop("hypervolume"))


#: leads a packed point: its format version (one byte)
_POINT_FORMAT = 1


def _point_dtype(d: int, k: int) -> np.dtype:
    """One packed point: format byte, float64 [4D + k + 2] (the four float series, the
    reward weights, scale and hypervolume), flag bytes [3D]; no padding."""
    return np.dtype([("format", "u1"), ("values", "<f8", (4 * d + k + 2,)),
                     ("flags", "u1", (3 * d,))])


def pack_point(point: ProgressPoint) -> bytes:
    """One row for the event it follows (`events.progress`): 1 + 8·(4D + k + 2) + 3D
    bytes; its seq, step and time are the event's own columns."""
    values = np.concatenate([point.probabilities, point.success, point.mean_abs_advantage,
                             point.zero_variance, point.reward_weights,
                             [point.reward_scale, point.hypervolume]]).astype("<f8")
    flags = np.concatenate([point.stalled, point.saturated, point.hopeless]).astype("u1")
    return bytes([_POINT_FORMAT]) + values.tobytes() + flags.tobytes()


def unpack_points(first_seq: int, step: np.ndarray, time: np.ndarray,
                  points: list[bytes], d: int, k: int) -> RowChunk:
    """The rows of consecutive events from their packed points (one copy per column);
    ValueError when one is not a point of this D and k."""
    dtype = _point_dtype(d, k)
    if any(len(p) != dtype.itemsize for p in points):
        raise ValueError(f"packed points of {sorted({len(p) for p in points})} bytes, "
                         f"expected {dtype.itemsize}")
    rows = np.frombuffer(b"".join(points), dtype=dtype)
    if rows.size and not (rows["format"] == _POINT_FORMAT).all():
        raise ValueError("a packed point of an unknown format")
    values, flags = rows["values"], rows["flags"].astype(bool)
    floats = ("probability", "success", "mean_abs_advantage", "zero_variance_fraction")
    series = {name: np.ascontiguousarray(values[:, i * d:(i + 1) * d])
              for i, name in enumerate(floats)}
    for i, name in enumerate(("stalled", "saturated", "hopeless")):
        series[name] = flags[:, i * d:(i + 1) * d]
    return RowChunk(first_seq=first_seq, step=np.asarray(step, dtype=np.int64),
                    time=np.asarray(time, dtype=np.float64), series=series,
                    reward_weights=np.ascontiguousarray(values[:, 4 * d:4 * d + k]),
                    reward_scale=values[:, 4 * d + k].copy(),
                    hypervolume=values[:, 4 * d + k + 1].copy())
