"""A one-minute tour of the engine: a toy trainer asks for batches, scores them and
reports back; prints what the curriculum learned. Run `python -m paceline_server.demo`."""

from __future__ import annotations

import argparse

import numpy as np

from paceline_server.domain import CurriculumSpec, Report
from paceline_server.engine import CurriculumEngine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sampler", default="uniform")
    parser.add_argument("--weighting", default="fixed")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    spec = CurriculumSpec.from_dict({
        "name": "demo",
        "layout": {"distributions": [{"name": "easy", "size": 2000},
                                     {"name": "medium", "size": 1000},
                                     {"name": "hard", "size": 200}]},
        "objectives": ["accuracy", {"name": "brevity"}],
        "sampler": args.sampler, "weighting": args.weighting, "batch_size": 32,
    })
    engine = CurriculumEngine(spec)
    rng = np.random.default_rng(0)
    pass_rate = np.array([0.9, 0.5, 0.1])
    for step in range(args.steps):
        batch = engine.next_batch("demo-run", step)
        p = pass_rate[engine.layout.distribution_of(batch.indices)]
        correct = rng.random((batch.indices.size, 8)) < p[:, None]
        brevity = rng.random((batch.indices.size, 8))
        rewards = np.stack([correct.astype(float), brevity], axis=-1)
        engine.apply(Report.dense(run_id="demo-run", step=step, indices=batch.indices,
                                  rewards=rewards, layout=spec.layout, num_objectives=2))
    view = engine.inspect()
    print(f"after {view.clock} reports; reward weights {view.reward_weights}")
    print(f"{'distribution':<12} {'size':>6} {'P':>6} {'success':>8} {'|A|':>6} {'flags'}")
    for d in view.distributions:
        flags = [name for name in ("stalled", "saturated", "hopeless")
                 if getattr(d.health, name)]
        print(f"{d.name:<12} {d.size:>6} {d.probability:>6.3f} {d.success or 0:>8.3f} "
              f"{d.mean_abs_advantage or 0:>6.3f} {','.join(flags)}")


if __name__ == "__main__":
    main()
