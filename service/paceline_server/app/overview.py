"""The dashboard's list of curricula: one summary per curriculum (strategy, reports, runs
and health) in one call, instead of the three requests per curriculum the browser would
otherwise make."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from paceline_server.app.service import PacelineService

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


def overview(service: PacelineService, limit: int = MAX_LISTED) -> list[CurriculumSummary]:
    """Summaries of the first `limit` curricula by name (reads only)."""
    out = []
    for record in service.list_curricula(limit=limit):
        runs = service.list_runs(record.name)
        view = service.state(record.name)
        flagged: dict[str, list[str]] = {"stalled": [], "saturated": [], "hopeless": []}
        for d in view.distributions:
            for flag, names in flagged.items():
                if getattr(d.health, flag):
                    names.append(d.name)
        beats = [r.record.last_heartbeat for r in runs]
        out.append(CurriculumSummary(
            name=record.name, sampler=str(record.spec["sampler"]["kind"]),
            weighting=str(record.spec["weighting"]["kind"]), created_at=record.created_at,
            reports=view.clock, distributions=len(view.distributions), runs=len(runs),
            stale_runs=sum(r.stale for r in runs),
            last_heartbeat=max(beats) if beats else None, flagged=flagged))
    return out
