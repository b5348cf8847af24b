"""Find, and fix where it can, stored rows that older versions wrote before every input
was validated once on every transport (`paceline-server repair`).

What it looks for, and what it does (all in one write transaction; `apply=False` only
lists):
- JSON documents (run metadata, specs) that are not a JSON object or hold lone
  surrogates, NaN or infinities: rewritten as `domain.stored_json.readable_document`
  renders them (sanitised, the stored text kept under `_paceline_original`); reads
  already render them so, the repair makes the row match.
- A spec that still cannot be loaded (unreadable, a parameter past today's limits):
  reported, never changed (another parameter would be another curriculum).
- A curriculum name outside the name rule (control characters, NUL...): renamed to the
  closest free name that follows it (its spec's `name` too; children hang off its id).
- An idempotency key with control characters: the characters written as `\\xNN`
  escapes (no client can send the old key again: it is refused on every transport).
- A run id with control characters: reported only. Its reports carry the id inside
  their payloads, so renaming would rewrite the log; the run stays listed and exported,
  but no REST path can name it.

PostgreSQL text cannot hold NUL at all, so there those rows never existed; the checks
are the same on both backends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Text, select, type_coerce, union_all, update

from paceline_server.domain.errors import PacelineError
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.domain.stored_json import ORIGINAL_KEY, readable_document
from paceline_server.domain.validation import NAME_PATTERN, has_control_characters
from paceline_server.store import tables as t

_NOT_NAME = re.compile(r"[^A-Za-z0-9._:-]")
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
#: The idempotency_key column's width.
_KEY_COLUMN = 256


@dataclass(frozen=True)
class Finding:
    """One stored row that cannot be rendered or reached as it is."""

    what: str  # "run metadata", "spec", "curriculum name", "idempotency key", "run id"
    where: str  # the row, printable (identifiers escaped)
    problem: str
    action: str | None  # what the repair does (did); None: it cannot be repaired

    def line(self, applied: bool) -> str:
        if self.action is None:
            verdict = "cannot repair"
        else:
            verdict = "repaired" if applied else "would repair"
        tail = f": {self.action}" if self.action else ""
        return f"{verdict}  {self.what} {self.where}: {self.problem}{tail}"


def printable(value: str) -> str:
    """`value` quoted, with control characters and lone surrogates escaped."""
    return repr(value)


def escaped(value: str) -> str:
    """Control characters and lone surrogates as `\\xNN` / `\\uNNNN` text."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                        else f"\\u{ord(m.group()):04x}", value)


#: Why a stored spec cannot be loaded (None: it can). The store only parses the spec;
#: the caller may pass a check that also builds its strategies (the CLI does).
SpecCheck = Callable[[dict[str, Any]], str | None]


def parses(spec: dict[str, Any]) -> str | None:
    """The domain's check of a spec: `CurriculumSpec.from_dict`."""
    try:
        CurriculumSpec.from_dict(spec)
    except PacelineError as exc:
        return exc.message
    except (ValueError, TypeError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


#: For a loadable spec, the check of one stored report payload: why today's code would
#: refuse to fold it (None: it folds). Decoding reports is the app's business, so the
#: caller passes it (the CLI does); without it reports are not looked at.
ReportCheck = Callable[[dict[str, Any]], Callable[[bytes], str | None]]


def repair(conn: Connection, *, apply: bool, spec_problem: SpecCheck = parses,
           report_check: ReportCheck | None = None) -> list[Finding]:
    """Every finding, in table order; with `apply`, the fixable ones are fixed on `conn`
    (the caller's transaction, committed by the caller)."""
    findings: list[Finding] = []
    names = _curriculum_names(conn)
    loadable: list[tuple[int, str, dict[str, Any]]] = []
    for cid, name, spec_text in conn.execute(
            select(t.curricula.c.id, t.curricula.c.name,
                   type_coerce(t.curricula.c.spec, Text)).order_by(t.curricula.c.id)).all():
        found = _curriculum(conn, int(cid), name, spec_text, names, apply, spec_problem)
        findings += found
        if not any(f.what == "spec" and f.action is None for f in found):
            loadable.append((int(cid), name, readable_document(spec_text)[0]))
    findings += _runs(conn, apply)
    findings += _keys(conn, apply)
    if report_check is not None:
        for cid, name, spec in loadable:
            findings += _reports(conn, cid, name, report_check(spec))
    return findings


def _reports(conn: Connection, cid: int, name: str,
             problem_of: Callable[[bytes], str | None]) -> list[Finding]:
    """Reports today's code refuses to fold: the curriculum answers that refusal (4xx)
    on every route that needs its engine until the report leaves the log, which only
    its owner can decide (export, drop the line, import under a new name)."""
    found: list[Finding] = []
    events = t.events
    rows = conn.execution_options(stream_results=True, yield_per=256).execute(
        select(events.c.seq, events.c.payload).where(events.c.curriculum_id == cid)
        .order_by(events.c.seq))
    for seq, payload in rows:
        problem = problem_of(bytes(payload))
        if problem is not None:
            found.append(Finding("report", f"{seq} of {printable(name)}",
                                 f"cannot be folded today ({problem})", None))
    return found


def _curriculum_names(conn: Connection) -> set[str]:
    return {name for (name,) in conn.execute(select(t.curricula.c.name))}


def _curriculum(conn: Connection, cid: int, name: str, spec_text: str, names: set[str],
                apply: bool, spec_problem: SpecCheck) -> list[Finding]:
    found: list[Finding] = []
    where = f"of curriculum {printable(name)}"
    spec, sanitised = readable_document(spec_text)
    if sanitised:
        found.append(Finding("spec", where, "not renderable as stored",
                             "rewritten sanitised, the stored text kept under "
                             f"{ORIGINAL_KEY}"))
    new_name = name
    if not NAME_PATTERN.match(name):
        new_name = _free_name(name, names)
        names.add(new_name)
        found.append(Finding("curriculum name", printable(name),
                             "not a valid curriculum name",
                             f"renamed to {new_name!r} (in its spec too)"))
        if spec.get("name") == name:
            spec = {**spec, "name": new_name}
    problem = spec_problem({**_as_parsed(spec_text, spec), "name": new_name})
    if problem is not None:
        found.append(Finding("spec", where, f"cannot be loaded ({problem})", None))
    if apply and (new_name != name or sanitised):
        conn.execute(update(t.curricula).where(t.curricula.c.id == cid).values(
            name=new_name, spec=type_coerce(_dumps(spec), Text)))
    return found


def _as_parsed(text: str, sanitised: dict[str, Any]) -> dict[str, Any]:
    """The spec as stored (NaN and all), for the load check to name the real problem;
    the sanitised one, less the kept text, when the stored text is no JSON object."""
    try:
        value = json.loads(text, strict=False)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return value
    return {k: v for k, v in sanitised.items() if k != ORIGINAL_KEY}


def _free_name(name: str, taken: set[str]) -> str:
    """A valid curriculum name close to `name` that no other curriculum has."""
    base = _NOT_NAME.sub("_", name).lstrip("._:-")[:110] or "curriculum"
    candidate, n = f"{base}-repaired", 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-repaired-{n}"
    return candidate


def _runs(conn: Connection, apply: bool) -> list[Finding]:
    found: list[Finding] = []
    runs, curricula = t.runs, t.curricula
    rows = conn.execute(
        select(runs.c.curriculum_id, curricula.c.name, runs.c.run_id,
               type_coerce(runs.c.metadata, Text))
        .join(curricula, curricula.c.id == runs.c.curriculum_id)
        .order_by(runs.c.curriculum_id, runs.c.run_id))
    for cid, curriculum, run_id, text in rows:
        where = f"{printable(run_id)} of {printable(curriculum)}"
        if has_control_characters(run_id):
            found.append(Finding("run id", where, "holds control characters (no REST path "
                                 "can name it; its reports carry it)", None))
        metadata, sanitised = readable_document(text)
        if sanitised:
            found.append(Finding("run metadata", where, "not renderable as stored",
                                 "rewritten sanitised, the stored text kept under "
                                 f"{ORIGINAL_KEY}"))
            if apply:
                conn.execute(update(runs).where(runs.c.curriculum_id == cid,
                                                runs.c.run_id == run_id)
                             .values(metadata=type_coerce(_dumps(metadata), Text)))
    return found


def _keys(conn: Connection, apply: bool) -> list[Finding]:
    found: list[Finding] = []
    events, curricula = t.events, t.curricula
    rows = conn.execute(
        select(events.c.curriculum_id, curricula.c.name, events.c.seq,
               events.c.idempotency_key)
        .join(curricula, curricula.c.id == events.c.curriculum_id)
        .where(events.c.idempotency_key.is_not(None))
        .order_by(events.c.curriculum_id, events.c.seq))
    for cid, curriculum, seq, key in rows:
        if not has_control_characters(key):
            continue
        where = f"of report {seq} of {printable(curriculum)}"
        new_key = escaped(key)
        # Taken in the log or by what pruning kept of a report (the duplicate checks read
        # both): two reports under one key would answer each other's retries.
        pruned = t.pruned_events
        taken = conn.execute(union_all(
            select(events.c.seq).where(events.c.curriculum_id == cid,
                                       events.c.idempotency_key == new_key),
            select(pruned.c.seq).where(pruned.c.curriculum_id == cid,
                                       pruned.c.idempotency_key == new_key))).first()
        if len(new_key) > _KEY_COLUMN or taken is not None:
            found.append(Finding("idempotency key", where,
                                 f"{printable(key)} holds control characters", None))
            continue
        found.append(Finding("idempotency key", where,
                             f"{printable(key)} holds control characters",
                             f"escaped to {new_key!r}"))
        if apply:
            conn.execute(update(events).where(events.c.curriculum_id == cid,
                                              events.c.seq == seq)
                         .values(idempotency_key=new_key))
    return found


def _dumps(document: Any) -> str:
    """The stored form of a JSON document (as `tables.JsonText` writes it)."""
    return json.dumps(document, separators=(",", ":"), allow_nan=False)
