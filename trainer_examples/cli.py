"""Command line: `train` one configuration, `compare` several side by side, `plot` again
from the metrics files. Run from the repository root as `python -m trainer_examples`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from trainer_examples.loop import Config, train

DEFAULT_CONFIGS = ("uniform:fixed", "dump_ucb:fixed", "dump_ucb:hypervolume")


def _param(text: str) -> tuple[str, Any]:
    """`key=value` with a JSON value (`mode=upweight` and `t0=3` both work)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value; got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _name_defaults(parser: argparse.ArgumentParser) -> None:
    """Append every option's default to its `--help` line (argparse's own formatter for
    that skips options without a help text, and shows tuples as Python reprs)."""
    for action in parser._actions:
        default = action.default
        unset = default is None or default is False or default == []  # 0 is a default
        if (not action.option_strings or unset or default == argparse.SUPPRESS
                or isinstance(action, argparse._HelpAction)):
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple | list) else default
        shown = str(shown).replace("%", "%%")  # the help is a format string; its text is
        action.help = f"{action.help or ''} (default: {shown})".strip()  # escaped already


def _common(parser: argparse.ArgumentParser) -> None:
    d = Config()
    add = parser.add_argument
    add("--out", default=None, help="output folder (metrics, plots, summary.json)")
    add("--url", default=None, help="Paceline service URL (http:// or grpc://); "
        "default: an embedded service on OUT/paceline.db")
    add("--reset", action="store_true", help="delete an existing curriculum of the name")
    add("--resume", action="store_true",
        help="continue the run from OUT/checkpoint.pt (without one: from step 0, on the "
        "reports its curriculum holds)")
    add("--checkpoint-every", type=int, default=d.checkpoint_every,
        help="write OUT/checkpoint.pt every N steps and at the end (0: never)")
    add("--sampler-param", action="append", type=_param, default=[], metavar="K=V")
    add("--weighting-param", action="append", type=_param, default=[], metavar="K=V")
    add("--preference", type=_floats, default=d.preference,
        help="preference weights over the objectives, e.g. 0.7,0.3")
    add("--objectives", type=_names, default=d.objectives,
        help="reward vector: correct,format or correct,format,brevity")
    add("--steps", type=int, default=d.steps)
    add("--batch-size", type=int, default=d.batch_size, help="prompts per step")
    add("--group-size", type=int, default=d.group_size, help="rollouts per prompt")
    add("--max-new-tokens", type=int, default=d.max_new_tokens)
    add("--temperature", type=float, default=d.temperature)
    add("--lr", type=float, default=d.lr)
    add("--clip-eps", type=float, default=d.clip_eps)
    add("--kl-coef", type=float, default=d.kl_coef, help="KL to the warm-started model")
    add("--inner-epochs", type=int, default=d.inner_epochs)
    add("--sft-steps", type=int, default=d.sft_steps, help="supervised warm-start steps")
    add("--sft-batch", type=int, default=d.sft_batch)
    add("--sft-lr", type=float, default=d.sft_lr)
    add("--sft-format-rate", type=float, default=d.sft_format_rate,
        help="share of warm-start targets written in the rewarded format, e.g. 7. (0..1)")
    add("--eval-every", type=int, default=d.eval_every)
    add("--eval-size", type=int, default=d.eval_size, help="held-out problems per distribution")
    add("--seed", type=int, default=d.seed)
    add("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    add("--threads", type=int, default=d.threads, help="torch CPU threads")
    add("--model", default=d.model,
        help="'tiny' (default) or a local Hugging Face model directory (needs transformers)")
    add("--dim", type=int, default=d.dim, help="tiny model width")
    add("--layers", type=int, default=d.layers, help="tiny model depth")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--grad-every", type=int, default=d.grad_every,
        help="send per-objective gradient products (grad_products) every N steps; 0: never")
    add("--grad-layers", default=d.grad_layers,
        help="parameters the gradients are taken on: last (default), all, or name prefixes")


def _config(args: argparse.Namespace, **overrides: Any) -> Config:
    values = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    values["progress"] = not args.no_progress
    values["sampler_params"] = dict(args.sampler_param)
    values["weighting_params"] = dict(args.weighting_param)
    try:
        return replace(Config(), **{**values, **overrides})
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer_examples", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("train", help="train one sampler / weighting configuration")
    one.add_argument("--sampler", default=Config.sampler)
    one.add_argument("--weighting", default=Config.weighting)
    one.add_argument("--curriculum", default=None, help="curriculum name")
    _common(one)

    many = sub.add_parser("compare", help="train several configurations one after another "
                          "(same seed, same warm start) and plot them together")
    many.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                      metavar="SAMPLER:WEIGHTING")
    _common(many)

    again = sub.add_parser("plot", help="redraw the plots of a train or compare folder")
    again.add_argument("folder", type=Path)
    for command in (one, many):
        _name_defaults(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plot":
        return _replot(args.folder)
    if args.command == "train":
        out = args.out or f"out/{args.sampler}-{args.weighting}"
        summary = train(_config(args, out=out))
        _print_summary(summary)
        return 0
    root = Path(args.out or "out/compare")
    runs: dict[str, Path] = {}
    summaries = []
    for item in args.configs:
        sampler, _, weighting = item.partition(":")
        if not weighting:
            raise SystemExit(f"--configs: expected SAMPLER:WEIGHTING; got {item!r}")
        label = f"{sampler}/{weighting}"
        folder = root / f"{sampler}-{weighting}"
        summaries.append(train(_config(args, sampler=sampler, weighting=weighting,
                                       out=str(folder))))
        runs[label] = folder
    from trainer_examples.plots import plot_compare

    plot_compare(runs, root)
    (root / "summary.json").write_text(json.dumps(
        {label: s for label, s in zip(runs, summaries, strict=True)}, indent=2) + "\n")
    for summary in summaries:
        _print_summary(summary)
    return 0


def _replot(folder: Path) -> int:
    from trainer_examples.plots import plot_compare, plot_run

    if (folder / "metrics.jsonl").exists():
        for path in plot_run(folder):
            print(path)
        return 0
    runs = {sub.name: sub for sub in sorted(folder.iterdir())
            if (sub / "metrics.jsonl").exists()}
    if not runs:
        print(f"no metrics.jsonl in {folder} or its subfolders", file=sys.stderr)
        return 1
    for sub in runs.values():
        plot_run(sub)
    print(plot_compare(runs, folder))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    config = summary["config"]
    first = summary["initial_eval"] or {}
    print(f"{config['sampler']}/{config['weighting']}: {summary['wall_s']:.0f}s on "
          f"{summary['device']}, {summary['service']['seq']} reports; held-out accuracy "
          + ", ".join(f"{name} {first.get(name, float('nan')):.2f}→{acc:.2f}"
                      for name, acc in summary["final_eval"].items())
          + f"; hypervolume {summary['final_hypervolume']:.3f}")
