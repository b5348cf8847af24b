"""An example trainer for Paceline: GRPO on a tiny character-level transformer (or a local
Hugging Face model) over generated arithmetic and logic tasks, with batches, reward
weights and loss weights served by Paceline.

From the repository root, after `pip install -e '.[examples]'`:

    python -m trainer_examples train --sampler dump_ucb --weighting hypervolume --out out/hv
    python -m trainer_examples compare --out out/compare      # uniform, dump_ucb, hypervolume
    python -m trainer_examples plot out/compare                # redraw the PNGs

Modules: `tasks` (problems, distributions, rewards), `model` (tiny transformer, HF
adapter), `grpo` (sampling, advantages, loss), `loop` (the trainer talking to Paceline),
`metrics`, `plots`, `cli`. See `docs/example_trainer.md` for results.
"""
