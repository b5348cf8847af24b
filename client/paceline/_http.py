"""The operations as REST requests: paths, query parameters and bodies in one place.

Only the HTTP transport reads this module; reports are encoded here (JSON or msgpack,
typed arrays, gzip above a size), the one place a report becomes bytes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from paceline import _operations as op
from paceline._payloads import ReportEncoding, encode_body, report_body

__all__ = ["PREFIX", "STRATEGIES", "Request", "request"]

PREFIX = "/v1/curricula"
STRATEGIES = "/v1/strategies"


@dataclass(frozen=True)
class Request:
    """One REST call, built once and sent (maybe several times) by the HTTP transport."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)


def _path(name: str, *rest: str) -> str:
    return "/".join([PREFIX, quote(name, safe=""), *(quote(r, safe="") for r in rest)])


def _params(**values: int | None) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value is not None}


def _page(o: op.ListCurricula | op.ListRuns) -> dict[str, str]:
    """A listing's query: the page token when there is one, else the offset (the service
    refuses the two together)."""
    if o.page_token:
        return {"limit": str(o.limit), "page_token": o.page_token}
    return {"limit": str(o.limit), "offset": str(o.offset)}


def _create(o: op.CreateCurriculum, _: ReportEncoding, __: int | None) -> Request:
    return Request("POST", PREFIX, json={**o.spec, "exist_ok": o.exist_ok})


def _batch(o: op.NextBatch, _: ReportEncoding, __: int | None) -> Request:
    body: dict[str, Any] = {"run_id": o.run_id, "step": o.step}
    if o.size is not None:
        body["size"] = o.size
    if o.part:
        body["part"] = o.part
    return Request("POST", _path(o.curriculum, "batches"), json=body)


def _report(o: op.Report, encoding: ReportEncoding, compress_over: int | None) -> Request:
    body = report_body(**o.arrays())
    key = o.idempotency_key
    in_header = key.isascii() and key.isprintable() and key == key.strip()
    if not in_header:  # e.g. a run id in another script: the body carries any text
        body["idempotency_key"] = key
    content, headers = encode_body(body, encoding=encoding, compress_over=compress_over)
    if in_header:
        headers = {**headers, "Idempotency-Key": key}
    return Request("POST", _path(o.curriculum, "reports"), content=content,
                   params=_params(next_step=o.next_step, next_size=o.next_size),
                   headers=headers)


Encoder = Callable[[Any, ReportEncoding, int | None], Request]
ENCODERS: dict[type[op.Operation], Encoder] = {
    op.CreateCurriculum: _create,
    op.GetCurriculum: lambda o, *_: Request("GET", _path(o.curriculum)),
    op.ListCurricula: lambda o, *_: Request("GET", PREFIX, params=_page(o)),
    op.DeleteCurriculum: lambda o, *_: Request("DELETE", _path(o.curriculum),
                                               params={"confirm": o.curriculum}),
    op.ListStrategies: lambda o, *_: Request("GET", STRATEGIES),
    op.GetState: lambda o, *_: Request("GET", _path(o.curriculum, "state")),
    op.GetHistory: lambda o, *_: Request("GET", _path(o.curriculum, "history"),
                                         params=_params(every=o.every, since=o.since)),
    op.AttachRun: lambda o, *_: Request("POST", _path(o.curriculum, "runs"), json={
        "run_id": o.run_id, "metadata": dict(o.metadata or {})}),
    op.GetRun: lambda o, *_: Request("GET", _path(o.curriculum, "runs", o.run_id)),
    op.ListRuns: lambda o, *_: Request("GET", _path(o.curriculum, "runs"), params=_page(o)),
    op.Heartbeat: lambda o, *_: Request("POST", _path(o.curriculum, "runs", o.run_id,
                                                      "heartbeat")),
    op.NextBatch: _batch,
    op.Report: _report,
}


def request(operation: op.Operation, encoding: ReportEncoding = "json",
            compress_over: int | None = None) -> Request:
    """The REST request that performs `operation` (reports in `encoding`, gzipped above
    `compress_over` bytes)."""
    return ENCODERS[type(operation)](operation, encoding, compress_over)
