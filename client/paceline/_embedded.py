"""The embedded mode: the service's operation layer (`paceline_server.app.operations`,
the one place that checks what callers send, over the `PacelineService` use cases) in
this process, on a SQLite file, called directly — no ASGI app, no HTTP, no JSON.

Each client operation becomes the layer's command, and its view the `Reply` REST would
give (status and JSON-shaped body); a domain error becomes the error body of its stable
code with the status of the service's one error table (`paceline_server.transport`), so
the client raises the same exception, with the same code and status, as over HTTP. What
makes a report durable and idempotent lives in the use case, so it holds here too; there
is nothing to retry in-process.

The server package is imported only here, only when asked for: the client installs and
imports without it.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paceline import _operations as op
from paceline._payloads import COMPRESS_OVER, ReportEncoding, _rewards, plain
from paceline._transport import Reply, client_closed
from paceline.errors import PacelineError as ClientError
from paceline.errors import Unavailable

if TYPE_CHECKING:
    import numpy as np

    from paceline_server.app.operations import Operations
    from paceline_server.app.service import PacelineService
    from paceline_server.store.base import Store

__all__ = ["AsyncEmbeddedTransport", "EmbeddedService", "EmbeddedTransport"]


def _require_server() -> None:
    if importlib.util.find_spec("paceline_server") is None:
        raise ImportError(
            "Client.embedded() runs the Paceline service in this process and needs the "
            "server package `paceline_server` (`pip install -e .` in a checkout of the "
            "repository: the distribution paceline); to talk to a running "
            "service use Client(url) instead")


#: Seconds `close` waits for calls still running in other threads.
CLOSE_WAIT_S = 60.0


@dataclass
class EmbeddedService:
    """The use cases and the store they run on, opened as the server opens them
    (`Settings`, `open_store` with the settings' options, the coordinator the settings
    name), the operation layer over them, and what to remove at close."""

    service: PacelineService
    operations: Operations
    store: Store
    tmpdir: str | None = None
    closed: bool = False
    #: Calls running in other threads, which `close` lets finish before it closes the
    #: store (it removed a temporary database under them: "disk I/O error").
    _busy: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None,
             settings: Mapping[str, Any]) -> EmbeddedService:
        """The service on `path` (a temporary file, removed at close, when None);
        `settings` override `paceline_server.settings.Settings` fields."""
        _require_server()
        from paceline_server.adapters.redis_coordination import coordinator_from_settings
        from paceline_server.app.operations import Operations
        from paceline_server.app.service import PacelineService
        from paceline_server.domain.errors import PacelineError
        from paceline_server.settings import Settings
        from paceline_server.store import open_store

        unknown = sorted(set(settings) - set(Settings.model_fields))
        if unknown:  # Settings ignores what it does not know: a typo changed nothing
            raise TypeError(f"embedded() got keyword arguments that are no setting of "
                            f"paceline_server.settings.Settings: {', '.join(unknown)}")
        tmpdir: str | None = None
        if path is None:
            tmpdir = tempfile.mkdtemp(prefix="paceline-")
            path = Path(tmpdir) / "paceline.db"
        db = Path(path).expanduser().resolve()
        # Hermetic about authentication: a token configured for some remote service in
        # the environment must not lock the caller out of their own in-process one.
        options: dict[str, Any] = {"database_url": f"sqlite:///{db}", "auto_migrate": True,
                                   "api_tokens": {}, **settings}
        try:
            resolved = Settings(**options)
            store = open_store(resolved.database_url, **resolved.store_options())
            try:
                service = PacelineService(store, resolved,
                                          coordinator=coordinator_from_settings(resolved))
            except BaseException:
                store.close()
                raise
        except BaseException as exc:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            if isinstance(exc, PacelineError):  # e.g. locked by another process: the
                raise _error_reply(exc).error() from exc  # client's class, as calls raise
            raise
        return cls(service, Operations(service), store, tmpdir)

    def close(self) -> None:
        """Finish the calls and reports in flight, close the store, remove a temporary
        database."""
        with self._idle:
            if self.closed:
                return
            self.closed = True
            self._idle.wait_for(lambda: self._busy == 0, timeout=CLOSE_WAIT_S)
        try:
            self.service.close()
        finally:
            try:
                self.store.close()
            finally:
                if self.tmpdir is not None:
                    shutil.rmtree(self.tmpdir, ignore_errors=True)

    # ------------------------------------------------------------ calls
    def execute(self, operation: op.Operation) -> Reply:
        """Perform `operation` in the calling thread (under numpy's default error
        handling, whatever the host process set: `domain/numerics.py`)."""
        from paceline_server.domain.numerics import numpy_defaults

        with self._idle:
            if self.closed:
                raise client_closed(operation.operation)
            self._busy += 1
        try:
            with numpy_defaults():
                status, body = HANDLERS[type(operation)](self, operation)
        except _NotJson as exc:  # over HTTP the client's JSON encoder refuses it
            raise exc.__cause__ from None  # type: ignore[misc]
        except Exception as exc:
            return self._failed(exc)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()
        return Reply(status, body, "", 1)

    async def execute_async(self, operation: op.Operation) -> Reply:
        """Perform `operation` for an event loop: a report is queued from the loop
        (`report_async`, as the server's loop does), anything else runs in a worker
        thread so that the loop never waits on the database."""
        if not isinstance(operation, op.Report):
            return await asyncio.to_thread(self.execute, operation)
        from paceline_server.domain.numerics import numpy_defaults

        try:
            with numpy_defaults():
                view = await self.operations.report_async(_report(operation))
        except Exception as exc:
            return self._failed(exc)
        return Reply(200, _ack(view), "", 1)

    def _failed(self, exc: Exception) -> Reply:
        """A domain error as REST's error body, with the status of its code; anything
        else is a bug: raised as INTERNAL (as REST answers it), with the cause chained."""
        from paceline_server.domain.errors import PacelineError

        if isinstance(exc, ClientError):  # refused while shaping it, as over HTTP
            raise exc
        if not isinstance(exc, PacelineError):
            raise Unavailable("INTERNAL", f"internal error: {type(exc).__name__}: {exc}",
                              status=500) from exc
        return _error_reply(exc)

    # ------------------------------------------------------------ operations
    def _create(self, o: op.CreateCurriculum) -> tuple[int, Any]:
        from paceline_server.app.operations import CreateCurriculum

        # exist_ok inside the document, as REST's body carries it (and the layer checks)
        result = self.operations.create_curriculum(
            CreateCurriculum(_as_json({**o.spec, "exist_ok": o.exist_ok})))
        return (201 if result.created else 200), _curriculum(result.record)

    def _get(self, o: op.GetCurriculum) -> tuple[int, Any]:
        return 200, _curriculum(self.operations.get_curriculum(o.curriculum))

    def _list(self, o: op.ListCurricula) -> tuple[int, Any]:
        from paceline_server.app.operations import ListCurricula

        page = self.operations.list_curricula(ListCurricula(o.limit, o.offset, o.page_token))
        return 200, {"curricula": [_curriculum(r) for r in page.items],
                     "next_page_token": page.next_page_token}

    def _delete(self, o: op.DeleteCurriculum) -> tuple[int, Any]:
        from paceline_server.app.operations import DeleteCurriculum

        self.operations.delete_curriculum(DeleteCurriculum(o.curriculum, o.curriculum))
        return 204, None

    def _strategies(self, o: op.ListStrategies) -> tuple[int, Any]:
        catalog = self.operations.strategies()
        return 200, _plain({
            "samplers": [_strategy(i) for i in catalog.samplers],
            "weightings": [_strategy(i) for i in catalog.weightings],
            "default_sampler": catalog.default_sampler,
            "default_weighting": catalog.default_weighting})

    def _state(self, o: op.GetState) -> tuple[int, Any]:
        return 200, _state(o.curriculum, self.operations.state(o.curriculum))

    def _history(self, o: op.GetHistory) -> tuple[int, Any]:
        from paceline_server.app.operations import GetHistory

        view = self.operations.history(GetHistory(o.curriculum, o.every, o.since))
        return 200, _history(view)

    def _attach(self, o: op.AttachRun) -> tuple[int, Any]:
        from paceline_server.app.operations import AttachRun

        status = self.operations.attach_run(
            AttachRun(o.curriculum, o.run_id, _as_json(o.metadata)))
        return 201, _run(status)

    def _get_run(self, o: op.GetRun) -> tuple[int, Any]:
        return 200, _run(self.operations.get_run(o.curriculum, o.run_id))

    def _runs(self, o: op.ListRuns) -> tuple[int, Any]:
        from paceline_server.app.operations import ListRuns

        page = self.operations.list_runs(ListRuns(o.curriculum, o.limit, o.offset,
                                                  o.page_token))
        return 200, {"runs": [_run(s) for s in page.items],
                     "next_page_token": page.next_page_token}

    def _heartbeat(self, o: op.Heartbeat) -> tuple[int, Any]:
        return 200, _run(self.operations.heartbeat(o.curriculum, o.run_id))

    def _next_batch(self, o: op.NextBatch) -> tuple[int, Any]:
        from paceline_server.app.operations import RequestBatch

        view = self.operations.batch(RequestBatch(o.curriculum, o.run_id, o.step, o.size,
                                                  o.part))
        return 200, _batch(view)

    def _report(self, o: op.Report) -> tuple[int, Any]:
        return 200, _ack(self.operations.report(_report(o)))


Handler = Callable[[EmbeddedService, Any], tuple[int, Any]]
HANDLERS: dict[type[op.Operation], Handler] = {
    op.CreateCurriculum: EmbeddedService._create,
    op.GetCurriculum: EmbeddedService._get,
    op.ListCurricula: EmbeddedService._list,
    op.DeleteCurriculum: EmbeddedService._delete,
    op.ListStrategies: EmbeddedService._strategies,
    op.GetState: EmbeddedService._state,
    op.GetHistory: EmbeddedService._history,
    op.AttachRun: EmbeddedService._attach,
    op.GetRun: EmbeddedService._get_run,
    op.ListRuns: EmbeddedService._runs,
    op.Heartbeat: EmbeddedService._heartbeat,
    op.NextBatch: EmbeddedService._next_batch,
    op.Report: EmbeddedService._report,
}


class _Transport:
    """What the sync and async embedded transports share."""

    def __init__(self, service: EmbeddedService,
                 on_close: Callable[[], None] | None = None) -> None:
        self.service = service
        self._on_close = on_close
        #: HTTP's report encoding, kept for the clients' properties: unused here.
        self.report_encoding: ReportEncoding = "json"
        self.compress_over: int | None = COMPRESS_OVER

    def _shut(self) -> None:
        if self._on_close is not None:
            self._on_close()
        else:
            self.service.close()


class EmbeddedTransport(_Transport):
    """Operations performed by the in-process service in the calling thread (the
    heartbeat thread included: the service is thread-safe, as it is under a server)."""

    def send(self, operation: op.Operation) -> Reply:
        return self.service.execute(operation)

    def close(self) -> None:
        self._shut()


class AsyncEmbeddedTransport(_Transport):
    """The asyncio twin (see `EmbeddedService.execute_async`)."""

    async def send(self, operation: op.Operation) -> Reply:
        return await self.service.execute_async(operation)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._shut)  # waits for reports in flight


def _error_reply(exc: Any) -> Reply:
    """A domain error as REST answers it: its error body, with the status of its code."""
    from paceline_server.transport.errors import status_of

    body = {"error": {"code": exc.code, "message": exc.message,
                      "details": _plain(exc.details)}}
    return Reply(status_of(exc), body, "", 1)


# ------------------------------------------------------------------ arguments
class _NotJson(Exception):
    """A document HTTP could not send (raised to the caller as its cause)."""


def _as_json(value: Any) -> Any:
    """A small document as the service would read it from a JSON body (tuples as lists,
    keys as text, a private copy; NaN refused as httpx refuses it): specs and run
    metadata, never on a hot path."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _NotJson from exc


def _native(value: Any) -> Any:
    """An array argument as the service reads it: a numpy array or torch tensor of a
    type the wire takes becomes its own numpy copy (what a typed array decodes to),
    anything else its plain lists, as JSON would carry it."""
    import numpy as np

    from paceline._payloads import TYPED_DTYPES

    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        try:
            value = value.detach().cpu().numpy()
        except (TypeError, RuntimeError):  # e.g. bfloat16: as lists, as over HTTP
            return plain(value)
    if isinstance(value, np.ndarray) and value.dtype.str in TYPED_DTYPES and value.ndim:
        copied: np.ndarray = np.array(value, copy=True)
        return copied
    return plain(value)


def _report(o: op.Report) -> Any:
    """The operation layer's report command: the body as `report_body` shapes it, the
    idempotency key and the asked-for next batch."""
    from paceline_server.app.operations import SubmitReport

    return SubmitReport(o.curriculum, report_body(o), o.idempotency_key, o.next_step,
                        o.next_size)


def report_body(o: op.Report) -> dict[str, Any]:
    """`_payloads.report_body` without the encoding: the mapping the use case parses
    (numpy arrays where the caller gave arrays, as a typed array decodes)."""
    body: dict[str, Any] = {"run_id": o.run_id, "step": o.step}
    if o.group_ids is None:
        body["indices"] = _native(o.indices)
    else:
        body["rollout_indices"] = _native(o.indices)
        body["group_ids"] = _native(o.group_ids)
    body["rewards"] = _rewards(o.rewards, o.objectives) if isinstance(o.rewards, Mapping) \
        else _native(o.rewards)
    for name in ("advantages", "grad_products"):
        value = getattr(o, name)
        if value is not None:
            body[name] = _native(value)
    if o.eval_objectives is not None:
        body["eval_objectives"] = plain(o.eval_objectives)
    if o.dropped is not None:
        body["dropped"] = plain(o.dropped)
    if o.unserved is not None:
        body["unserved"] = o.unserved
    return body


# ------------------------------------------------------------------ answers
def _plain(value: Any) -> Any:
    """Data as REST's JSON would give it back: numpy values as Python ones, tuples as
    lists, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _batch(view: Any) -> dict[str, Any]:
    """A batch in REST's shape, straight from the domain's arrays."""
    batch, loss = view.batch, view.batch.loss_weights
    return {
        "run_id": batch.run_id, "step": int(batch.step), "indices": batch.indices.tolist(),
        "reward_weights": dict(zip(view.objectives, batch.reward_weights.tolist(),
                                   strict=True)),
        "reward_scale": float(batch.reward_scale),
        "loss_weights": None if loss is None else loss.tolist(),
        "probabilities": dict(zip(view.distributions, batch.probabilities.tolist(),
                                  strict=True)),
        "skipped_zero_variance": int(batch.skipped_zero_variance),
        "rollouts_saved": int(batch.rollouts_saved), "seq": int(batch.clock),
        "part": view.part}


def _ack(view: Any) -> dict[str, Any]:
    """An ack in REST's shape: the rollout counts only for a report that named its
    dropped groups, the batch only when one was asked for."""
    ack = view.ack
    out: dict[str, Any] = {"seq": ack.seq, "replayed": ack.replayed}
    if view.batch is not None:
        out["batch"] = _batch(view.batch)
    if ack.dynamic:
        out.update(rollouts_generated=ack.rollouts_generated,
                   rollouts_trained=ack.rollouts_trained, groups_dropped=ack.groups_dropped)
    return out


def _finite(values: np.ndarray) -> list[Any]:
    return [None if v != v else v for v in values.tolist()]  # NaN as None


def _curriculum(record: Any) -> dict[str, Any]:
    return {"name": record.name, "spec": copy.deepcopy(record.spec),
            "created_at": record.created_at, "seq": record.head_seq,
            "num_samples": record.num_samples, "distributions": list(record.distributions),
            "objectives": list(record.objectives)}


def _run(status: Any) -> dict[str, Any]:
    run = status.record
    return {"run_id": run.run_id, "curriculum": run.curriculum,
            "created_at": run.created_at, "last_heartbeat": run.last_heartbeat,
            "stale": status.stale, "metadata": copy.deepcopy(run.metadata)}


def _strategy(info: Any) -> dict[str, Any]:
    return {"name": info.name, "origin": info.origin, "default": info.is_default,
            "description": info.description, "error": info.error,
            "params": [{"name": p.name, "type": p.type, "default": p.default,
                        "required": p.required,
                        "choices": None if p.choices is None else list(p.choices)}
                       for p in info.params]}


def _state(name: str, view: Any) -> dict[str, Any]:
    objectives = list(view.objectives)
    return _plain({
        "name": name, "seq": view.clock, "objectives": objectives,
        "reward_weights": dict(zip(objectives, view.reward_weights, strict=True)),
        "reward_scale": view.reward_scale,
        "distributions": [{
            "name": d.name, "size": d.size, "probability": d.probability,
            "success": d.success, "mean_abs_advantage": d.mean_abs_advantage,
            "learning_progress": d.learning_progress,
            "zero_variance_fraction": d.zero_variance_fraction, "reports": d.reports,
            "sampled": d.sampled, "rollouts": d.rollouts,
            "health": {"stalled": d.health.stalled, "saturated": d.health.saturated,
                       "hopeless": d.health.hopeless}} for d in view.distributions],
        "weight_history": [{"seq": r.clock,
                            "weights": dict(zip(objectives, r.weights, strict=True)),
                            "scale": r.scale} for r in view.weight_history],
        "hypervolume_history": [{"seq": r.clock, "hypervolume": r.hypervolume,
                                 "point": list(r.point)} for r in view.hypervolume_history],
        "sampler": view.sampler, "weighting": view.weighting,
        "explanations": [{"name": e.name, "probability": e.probability,
                          "terms": dict(e.terms), "sentence": e.sentence,
                          "flags": list(e.flags)} for e in view.explanations]})


def _history(view: Any) -> dict[str, Any]:
    """A history in REST's column shape (NaN as None)."""
    return {
        "name": view.name, "head_seq": view.head_seq, "first_seq": view.first_seq,
        "every": view.every, "complete": view.complete, "replayed_seq": view.replayed_seq,
        "objectives": list(view.objectives), "distributions": list(view.distributions),
        "seq": view.seq.tolist(), "step": view.step.tolist(), "time": _finite(view.time),
        "per_distribution": {
            name: {key: _finite(values[:, d]) for key, values in view.series.items()}
            for d, name in enumerate(view.distributions)},
        "reward_weights": {objective: _finite(view.reward_weights[:, i])
                           for i, objective in enumerate(view.objectives)},
        "reward_scale": _finite(view.reward_scale), "hypervolume": _finite(view.hypervolume)}
