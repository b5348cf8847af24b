"""Request ids, the same on every transport: each call carries one, in the `x-request-id`
header (REST) or metadata (gRPC), and the service echoes it on the answer and names it
in every log line about the call's failure.

Why: a trainer sees `Unavailable: INTERNAL` and an operator sees a traceback among
thousands; the id ties the two together. The client sends one id per operation and the
same id on each of its retries, so the server's log shows every attempt of one call. An
id the caller sent is kept when it is short and plain (letters, digits, `._:-`, at most
128 characters); anything else (a log-injection attempt, a value no header carries) is
replaced by a fresh one, which the answer then names.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

__all__ = ["HEADER", "accept", "current", "label"]

HEADER = "x-request-id"
_PLAIN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: The id of the call being served (None outside a call).
current: ContextVar[str | None] = ContextVar("paceline_request_id", default=None)


def accept(value: str | bytes | None) -> str:
    """The caller's id when it is plain enough to log and echo, else a fresh one."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is not None and _PLAIN.fullmatch(value):
        return value
    return uuid.uuid4().hex


def label() -> str:
    """` (request <id>)` for a log line about the current call ('' outside a call)."""
    value = current.get()
    return "" if value is None else f" (request {value})"
