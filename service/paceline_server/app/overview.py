"""The dashboard's list of curricula: one summary per curriculum (strategy, reports, runs
and health) in one call, instead of the three requests per curriculum the browser would
otherwise make.

The page polls it every few seconds. Health needs a curriculum's engine, and loading
every engine on every poll made a list of 100 curricula cost 1.5-4 s a call (more than
the engine cache holds, so each poll evicted and reloaded them all, trainers' engines
included): the engine-dependent part of a summary is kept per (curriculum, created_at,
head seq) and recomputed only for curricula that changed since. A curriculum deleted
while the list is built is left out, not an error of the whole list.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from paceline_server.app.service import PacelineService
from paceline_server.domain.errors import NotFound

#: curricula the list shows (the store lists them by name)
MAX_LISTED = 1000


@dataclass(frozen=True)
class CurriculumSummary:
    name: str
    sampler: str
    weighting: str
    created_at: datetime
    reports: int  # the head sequence number
    distributions: int
    runs: int
    stale_runs: int
    last_heartbeat: datetime | None  # the most recent of its runs
    flagged: dict[str, list[str]]  # health flag -> distributions that raise it


@dataclass(frozen=True)
class Listing:
    curricula: list[CurriculumSummary]
    truncated: bool  # more curricula exist than `limit`


@dataclass(frozen=True)
class _Health:
    key: tuple[datetime, int]  # (created_at, head seq) it was read at
    reports: int
    distributions: int
    flagged: dict[str, list[str]]


class Overview:
    """Builds listings for one service, remembering each curriculum's health."""

    def __init__(self, service: PacelineService) -> None:
        self.service = service
        self._health: dict[str, _Health] = {}
        self._guard = threading.Lock()

    def listing(self, limit: int = MAX_LISTED) -> Listing:
        """Summaries of the first `limit` curricula by name (reads only)."""
        records = self.service.list_curricula(limit=limit + 1)
        out, kept = [], {}
        for record in records[:limit]:
            try:
                runs = self.service.run_summary(record.name)
                health = self._health_of(record.name, (record.created_at, record.head_seq))
            except NotFound:  # deleted since it was listed
                continue
            kept[record.name] = health
            out.append(CurriculumSummary(
                name=record.name, sampler=str(record.spec["sampler"]["kind"]),
                weighting=str(record.spec["weighting"]["kind"]),
                created_at=record.created_at, reports=health.reports,
                distributions=health.distributions, runs=runs.runs,
                stale_runs=runs.stale, last_heartbeat=runs.last_heartbeat,
                flagged=health.flagged))
        with self._guard:
            self._health = kept  # only what the list still shows is remembered
        return Listing(out, truncated=len(records) > limit)

    def _health_of(self, name: str, key: tuple[datetime, int]) -> _Health:
        with self._guard:
            known = self._health.get(name)
        if known is not None and known.key == key:
            return known
        view = self.service.state(name)
        flagged: dict[str, list[str]] = {"stalled": [], "saturated": [], "hopeless": []}
        for d in view.distributions:
            for flag, names in flagged.items():
                if getattr(d.health, flag):
                    names.append(d.name)
        # Keyed by what was asked for: a report folded meanwhile changes the head, and
        # the next listing reads the state again.
        return _Health(key, view.clock, len(view.distributions), flagged)
