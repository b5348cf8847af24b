"""Generated tasks: several distributions of different sizes and difficulties, and the
reward vector each completion earns.

The tasks are chosen so that a tiny character-level transformer learns them on a CPU in
minutes while the distributions still differ enough for a curriculum to matter:

| distribution | prompt → answer     | size | difficulty                                      |
|--------------|---------------------|------|-------------------------------------------------|
| `add1`       | `3+4=` → `7`        | 100  | every 1-digit sum: learned quickly              |
| `add2`       | `47+8=` → `55`      | 600  | 2-digit + 1-digit, with carries                 |
| `add3`       | `47+38=` → `85`     | 2000 | 2-digit + 2-digit: slow for a tiny model        |
| `logic1`     | `!T&F=` → `F`       | 48   | one operator, optional negations                |
| `logic2`     | `T|!F^T=` → `F`     | 576  | two operators, left to right: the last operator |
|              |                     |      | alone gives 2/3 accuracy, the rest needs both   |

Every distribution's universe of problems is enumerated and shuffled with the seed; the
first `size` problems are the training pool Paceline indexes, the rest (where there is
a rest) are held out for evaluation, so `add2` and `add3` measure generalisation.

Objectives (both maximised and in [0, 1], so `batch.scalarize` — a plain weighted sum —
is meaningful without sign conventions):
- `correct`: the answer (before the closing mark, if any) is exact and closed by EOS;
- `format`: the answer is closed as the instructions ask — `7.`, `T.` — and well formed
  (1 to 3 digits for arithmetic, one `T`/`F` for logic), then EOS. Like the closing
  `</answer>` tag of R1-style format rewards, the warm start shows it only in
  `FORMAT_RATE` of its targets, so RL has to raise it; an empty or rambling completion
  earns nothing on either objective. The mark comes after the answer so that both
  formats put the digits at the same positions (a wrapping `(7)` slowed the warm
  start's arithmetic several-fold).

Why no length objective by default: with "1 − tokens / max_new_tokens" the policy found
that an immediate EOS maximises it whenever correctness gives no signal (a batch dominated
by the hard `add3`), and arithmetic accuracy collapsed to 0 within 60 steps; see
docs/example_trainer.md. That is exactly a trade-off a reward weighting has to manage, so
it is available as an opt-in third objective (`--objectives correct,format,brevity`):
- `brevity`: 1 − characters / max_new_tokens of a finished completion (0 without EOS),
  in [0, 1] and maximised. An immediate EOS earns 1 here and nothing elsewhere — the
  "say nothing" hack — while the best completion (`7.`) still earns most of it.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

OBJECTIVES: tuple[str, ...] = ("correct", "format")  # the default task's objectives
ALL_OBJECTIVES: tuple[str, ...] = ("correct", "format", "brevity")
FORMAT_RATE = 0.25  # share of warm-start targets written in the requested format
MARK = "."  # the closing mark the format objective asks for

_LOGIC_OPS: dict[str, Callable[[bool, bool], bool]] = {
    "&": lambda a, b: a and b,
    "|": lambda a, b: a or b,
    "^": lambda a, b: a != b,
}
_LITERALS: dict[str, bool] = {"T": True, "F": False, "!T": False, "!F": True}


@dataclass(frozen=True)
class Problem:
    """One prompt and its reference answer."""

    prompt: str
    answer: str

    def target(self, formatted: bool) -> str:
        """The completion to imitate in the warm start (EOS follows it)."""
        return f"{self.answer}{MARK}" if formatted else self.answer


@dataclass(frozen=True)
class Distribution:
    """A named pool of training problems plus held-out evaluation problems."""

    name: str
    train: tuple[Problem, ...]
    eval: tuple[Problem, ...]

    @property
    def size(self) -> int:
        return len(self.train)


def _numbers(digits: int) -> range:
    return range(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def _addition(left: int, right: int) -> list[Problem]:
    return [Problem(f"{a}+{b}=", str(a + b))
            for a in _numbers(left) for b in _numbers(right)]


def _logic(operators: int) -> list[Problem]:
    problems = []
    for literals in itertools.product(_LITERALS, repeat=operators + 1):
        for ops in itertools.product(_LOGIC_OPS, repeat=operators):
            value = _LITERALS[literals[0]]
            text = literals[0]
            for op, literal in zip(ops, literals[1:], strict=True):
                value = _LOGIC_OPS[op](value, _LITERALS[literal])
                text += op + literal
            problems.append(Problem(f"{text}=", "T" if value else "F"))
    return problems


# name → (universe generator, training-pool size); the order is the curriculum's order.
_CATALOGUE: dict[str, tuple[Callable[[], list[Problem]], int | None]] = {
    "add1": (lambda: _addition(1, 1), None),
    "add2": (lambda: _addition(2, 1), 600),
    "add3": (lambda: _addition(2, 2), 2000),
    "logic1": (lambda: _logic(1), None),
    "logic2": (lambda: _logic(2), None),
}
DISTRIBUTIONS: tuple[str, ...] = tuple(_CATALOGUE)


class TaskSet:
    """The dataset Paceline addresses: distribution d's samples are the global indices
    `offsets[d] .. offsets[d] + size_d - 1`, in `DISTRIBUTIONS` order."""

    def __init__(self, seed: int = 0, eval_size: int = 48,
                 names: Sequence[str] = DISTRIBUTIONS) -> None:
        unknown = [n for n in names if n not in _CATALOGUE]
        if unknown:
            raise ValueError(f"unknown distributions {unknown}; known: {list(_CATALOGUE)}")
        rng = random.Random(seed)
        self.distributions: list[Distribution] = []
        for name in names:
            make, size = _CATALOGUE[name]
            universe = make()
            rng.shuffle(universe)
            train = universe[: size or len(universe)]
            rest = universe[len(train):]
            # Small universes are fully in the training pool: evaluate on (part of) it.
            # Others are evaluated on problems outside the pool only, however many are
            # asked for (an eval_size above what is left used to evaluate add2 on its
            # training pool, under the name held-out accuracy).
            held_out = rest if rest else train
            self.distributions.append(
                Distribution(name, tuple(train), tuple(held_out[:eval_size])))
        self.offsets = np.cumsum([0] + [d.size for d in self.distributions])[:-1]
        self._problems = [p for d in self.distributions for p in d.train]
        self._labels = np.repeat(np.arange(len(self.distributions)),
                                 [d.size for d in self.distributions])

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.distributions]

    def __len__(self) -> int:
        return len(self._problems)

    def __getitem__(self, index: int) -> Problem:
        return self._problems[index]

    def distribution_of(self, indices: Sequence[int]) -> np.ndarray:
        """The distribution position of each global index."""
        return self._labels[np.asarray(indices, dtype=np.int64)]

    def layout(self) -> list[dict[str, object]]:
        """The `distributions=` argument of `create_curriculum`."""
        return [{"name": d.name, "size": d.size} for d in self.distributions]

    def sample_supervised(self, rng: np.random.Generator, n: int,
                          format_rate: float = FORMAT_RATE) -> list[tuple[str, str]]:
        """(prompt, target) pairs for the warm start: a distribution uniformly, then a
        problem in it, so the small pools are not drowned by the large one; a share
        `format_rate` of the targets is in the requested format."""
        which = rng.integers(len(self.distributions), size=n)
        formatted = rng.random(n) < format_rate
        pairs = []
        for d, fmt in zip(which, formatted, strict=True):
            problem = self.distributions[d].train[int(rng.integers(self.distributions[d].size))]
            pairs.append((problem.prompt, problem.target(bool(fmt))))
        return pairs


_WELL_FORMED = {True: re.compile(r"[0-9]{1,3}"), False: re.compile(r"[TF]")}


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """The objectives of a run: `correct` first, then any of the others, each once."""
    chosen = tuple(objectives)
    unknown = [o for o in chosen if o not in ALL_OBJECTIVES]
    if unknown or not chosen or chosen[0] != "correct" or len(set(chosen)) != len(chosen):
        raise ValueError(f"objectives must start with 'correct' and name each of "
                         f"{list(ALL_OBJECTIVES)} at most once, got {list(chosen)}")
    return chosen


def score(completion: str, finished: bool, answer: str,
          objectives: Sequence[str] = OBJECTIVES,
          max_length: int = 6) -> tuple[float, ...]:
    """The reward vector of one completion over `objectives` (default (correct, format)):
    `completion` is the decoded text before EOS, `finished` whether EOS was produced,
    `max_length` the generation budget `brevity` is measured against."""
    if not finished:
        return tuple(0.0 for _ in objectives)
    text = completion.strip()
    closed = text.endswith(MARK)
    inner = text[: -len(MARK)] if closed else text
    well_formed = closed and _WELL_FORMED[answer.isdigit()].fullmatch(inner) is not None
    values = {"correct": 1.0 if inner == answer else 0.0,
              "format": 1.0 if well_formed else 0.0,
              "brevity": max(0.0, 1.0 - len(text) / max_length)}
    return tuple(values[o] for o in objectives)
