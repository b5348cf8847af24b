"""Per-step metrics: written as JSON lines (one object per step, `null` for missing
values) and as CSV (empty cells), flushed every step so a crashed run keeps its history
and the plots can be redrawn from the files alone."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

Record = dict[str, Any]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Writes records to `metrics.jsonl` and `metrics.csv` in `out` and keeps them
    (`records`, what a checkpoint saves). A resumed run starts from `keep`, the rows
    before its checkpoint: both files are replaced by those rows at once (written beside
    them, then renamed), so a run killed while it resumes never leaves them truncated.
    The CSV header is fixed by the first record (every record of a run has the same
    keys)."""

    def __init__(self, out: Path, keep: Sequence[Record] = ()) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = out / "metrics.jsonl"
        self.csv_path = out / "metrics.csv"
        self.records: list[Record] = []
        self._csv: csv.DictWriter[str] | None = None
        if keep:
            partial = [path.with_name(f".{path.name}.partial")
                       for path in (self.jsonl_path, self.csv_path)]
            self._open(*partial, "w")
            for record in keep:
                self.write(record)
            self.close()
            for path, final in zip(partial, (self.jsonl_path, self.csv_path), strict=True):
                os.replace(path, final)
        self._open(self.jsonl_path, self.csv_path, "a" if keep else "w")

    def _open(self, jsonl: Path, csv_path: Path, mode: str) -> None:
        self._jsonl: TextIO = jsonl.open(mode)
        self._csv_file: TextIO = csv_path.open(mode, newline="")
        if self._csv is not None:  # appending after the kept rows: their header stands
            self._csv = csv.DictWriter(self._csv_file, fieldnames=self._csv.fieldnames)

    def write(self, record: Record) -> None:
        clean = {k: _clean(v) for k, v in record.items()}
        self._jsonl.write(json.dumps(clean) + "\n")
        self._jsonl.flush()
        if self._csv is None:
            self._csv = csv.DictWriter(self._csv_file, fieldnames=list(clean))
            self._csv.writeheader()
        self._csv.writerow({k: "" if v is None else v for k, v in clean.items()})
        self._csv_file.flush()
        self.records.append(clean)

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_metrics(path: Path) -> list[Record]:
    """The records of a `metrics.jsonl` (a folder holding one is accepted too)."""
    if path.is_dir():
        path = path / "metrics.jsonl"
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def column(records: Iterable[Record], key: str) -> list[float]:
    """One metric as floats, NaN where missing (what matplotlib draws as a gap)."""
    return [math.nan if r.get(key) is None else float(r[key]) for r in records]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by `points` above `reference` (every objective
    maximised), by slicing along the last objective. Exponential in the number of
    objectives but instant for the handful of evaluation points of a run; kept here so
    the example needs no hypervolume library to compare runs."""
    ref = list(reference)
    pts = [list(p) for p in points if all(x > r for x, r in zip(p, ref, strict=True))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return max(p[0] for p in pts) - ref[0]
    pts.sort(key=lambda p: p[-1], reverse=True)
    total = 0.0
    for i, p in enumerate(pts):
        floor = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if p[-1] > floor:
            total += (p[-1] - floor) * hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return total
