"""Why a distribution gets its probability: the numbers its sampler used, and a sentence.

A sampler says what drove its choice (`Reason`: named terms plus a clause such as "its
learnability is 0.31 plus an exploration bonus of 0.05"); the engine adds the share and
what the health signals say, so the sentence a person reads is one line with the numbers
behind it ("`hard` gets 4 % because ...: flagged hopeless").
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reason:
    """A sampler's own account of one distribution's probability."""

    clause: str  # completes "`name` gets P % because ..."
    terms: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Explanation:
    """One distribution's probability, the terms behind it and the sentence for humans."""

    name: str
    probability: float
    terms: dict[str, float | None]
    sentence: str
    flags: tuple[str, ...] = ()  # health flags raised (stalled, saturated, hopeless)


def percent(probability: float) -> str:
    """A share for a sentence: whole percent, one decimal below 10 %, '< 0.1 %' below that."""
    value = 100.0 * probability
    if value >= 9.95:
        return f"{value:.0f} %"
    if value >= 0.05:
        return f"{value:.1f} %"
    return "< 0.1 %" if value > 0 else "0 %"


def number(value: float | None) -> str:
    """A term's value in a sentence: three significant digits, '-' when unknown."""
    if value is None:
        return "-"
    return f"{value:.3g}"
