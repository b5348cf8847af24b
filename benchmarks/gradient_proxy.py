"""How well does the `gradient` weighting's rollout proxy track the real Gram matrix of
per-objective policy gradients? Figures from example-trainer runs made with
`--grad-every N` (each such step logs the real matrix and the proxy's agreement with it;
`trainer_examples/gradients.py`).

    python -m trainer_examples train --weighting fixed --grad-every 2 --out out/grads
    python benchmarks/gradient_proxy.py out/grads [more run folders]

Per run: the steps with a measured matrix; mean and median cosine of the two matrices
(both scaled to max |entry| 1); share of steps where the two would move the weights in
the same direction (cosine of the centred influences > 0; with two objectives ±1); share
where every off-diagonal entry has the same sign (agree on conflict vs synergy); the
same over the steps where both objectives vary in the batch (off-diagonal ≠ 0), and the
real matrix's mean diagonal and off-diagonal entries.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def records(folder: Path) -> list[dict[str, Any]]:
    with (folder / "metrics.jsonl").open() as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if not r.get("final") and r.get("grad_products_computed") == 1.0]


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    gram_keys = sorted(k for k in rows[0] if k.startswith("gram_")) if rows else []
    off_keys = [k for k in gram_keys if len(set(k.split("_")[1:])) > 1]
    diag_keys = [k for k in gram_keys if k not in off_keys]

    def stats(subset: list[dict[str, Any]]) -> dict[str, Any]:
        cosine = [r["proxy_gram_cosine"] for r in subset
                  if r["proxy_gram_cosine"] is not None and math.isfinite(r["proxy_gram_cosine"])]
        move = [r["proxy_move_cosine"] for r in subset
                if r["proxy_move_cosine"] is not None and math.isfinite(r["proxy_move_cosine"])]
        return {
            "steps": len(subset),
            "gram_cosine_mean": float(np.mean(cosine)) if cosine else math.nan,
            "gram_cosine_median": float(np.median(cosine)) if cosine else math.nan,
            "same_move_share": float(np.mean([m > 0 for m in move])) if move else math.nan,
            "conflict_sign_agrees": float(np.mean([r["proxy_conflict_agrees"]
                                                   for r in subset])) if subset else math.nan,
        }

    both_vary = [r for r in rows if any(r[k] != 0 for k in off_keys)]
    return {
        "all": stats(rows), "both_vary": stats(both_vary),
        "real_diag_mean": {k: float(np.mean([r[k] for r in rows])) for k in diag_keys},
        "real_off_mean": {k: float(np.mean([r[k] for r in rows])) for k in off_keys},
        "real_off_negative_share": {k: float(np.mean([r[k] < 0 for r in both_vary]))
                                    if both_vary else math.nan for k in off_keys},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for folder in args.runs:
        rows = records(folder)
        if not rows:
            print(f"{folder}: no step with grad_products (run with --grad-every N)")
            continue
        print(json.dumps({"run": str(folder), **summary(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
