"""`paceline-server`: serve, migrate, inspect, export/import, what-if replay."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from paceline_server.app.codec import decode_report
from paceline_server.app.replay import replay
from paceline_server.app.service import PacelineService
from paceline_server.domain.errors import PacelineError
from paceline_server.domain.report import Report
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.settings import Settings

if TYPE_CHECKING:  # imported lazily: gRPC is loaded only when serving it
    from paceline_server.api.metrics import Metrics
    from paceline_server.grpc.server import GrpcServer


def _service(settings: Settings) -> PacelineService:
    from paceline_server.store import open_store

    store = open_store(settings.database_url, **settings.store_options())
    return PacelineService(store, settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    updates = {k: v for k, v in (("host", args.host), ("port", args.port),
                                 ("workers", args.workers),
                                 ("grpc_port", getattr(args, "grpc_port", None)))
               if v is not None}
    settings = settings.model_copy(update=updates)
    grpc_server: GrpcServer | None = None
    if settings.workers > 1:
        # Workers import the app by factory and read settings from the environment; the
        # gRPC server (if any) runs in this parent process with its own service object.
        os.environ["PACELINE_DATABASE_URL"] = settings.database_url
        grpc_service = _service(settings) if settings.grpc_port is not None else None
        if grpc_service is not None:
            grpc_server = _start_grpc(grpc_service, settings)
        try:
            uvicorn.run("paceline_server.api.app:create_app", factory=True,
                        host=settings.host, port=settings.port, workers=settings.workers,
                        log_level=settings.log_level)
        finally:
            if grpc_server is not None:
                grpc_server.stop()
            if grpc_service is not None:
                grpc_service.close()
        return 0
    from paceline_server.api.app import create_app
    from paceline_server.store import open_store

    # The store is opened here, not by the app, so it outlives both servers.
    store = open_store(settings.database_url, **settings.store_options())
    service: PacelineService | None = None
    try:
        app = create_app(settings, store)
        service = app.state.service
        if settings.grpc_port is not None:
            grpc_server = _start_grpc(app.state.service, settings, app.state.metrics)
        uvicorn.run(app, host=settings.host, port=settings.port,
                    log_level=settings.log_level)
    finally:
        if grpc_server is not None:
            grpc_server.stop()
        if service is not None:
            service.close()  # its coordinator's threads and Redis connections
        store.close()
    return 0


def _start_grpc(service: PacelineService, settings: Settings,
                metrics: Metrics | None = None) -> GrpcServer:
    """Start the gRPC API beside uvicorn (stopped by the caller after uvicorn returns)."""
    from paceline_server.grpc.server import create_server

    server = create_server(service, settings, metrics=metrics)
    server.start()
    print(f"paceline gRPC API on {settings.host}:{server.port}", file=sys.stderr, flush=True)
    return server


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from paceline_server.store.migrate import current_revision, upgrade

    upgrade(settings.database_url)
    print(f"schema at revision {current_revision(settings.database_url)}")
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    record, view = _service(settings).inspect(args.name)
    print(f"curriculum {record.name}  seq {view.clock}  sampler "
          f"{record.spec['sampler']['kind']}  weighting {record.spec['weighting']['kind']}",
          file=out)
    weights = ", ".join(f"{o}={w:.3f}" for o, w in
                        zip(view.objectives, view.reward_weights, strict=True))
    print(f"reward weights: {weights}  scale {view.reward_scale:.3f}", file=out)
    header = (f"{'distribution':<20} {'size':>9} {'P':>7} {'success':>8} {'|A|':>7} "
              f"{'LP':>7} {'zero-var':>8} {'sampled':>9}  flags")
    print(header, file=out)
    print("-" * len(header), file=out)

    def fmt(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"

    for d in view.distributions:
        flags = ",".join(f for f in ("stalled", "saturated", "hopeless")
                         if getattr(d.health, f))
        print(f"{d.name:<20} {d.size:>9} {d.probability:>7.3f} {fmt(d.success, 8)} "
              f"{fmt(d.mean_abs_advantage, 7)} {d.learning_progress:>7.3f} "
              f"{fmt(d.zero_variance_fraction, 8)} {d.sampled:>9}  {flags}", file=out)
    return 0


def report_to_json(report: Report) -> dict[str, Any]:
    """A report in the API's flat form, so an export can be re-imported or posted."""
    data: dict[str, Any] = {
        "run_id": report.run_id, "step": report.step,
        "rollout_indices": report.indices[report.group_of].tolist(),
        "group_ids": report.group_of.tolist(), "rewards": report.rewards.tolist(),
    }
    for name in ("advantages", "grad_products", "eval_objectives"):
        value = getattr(report, name)
        if value is not None:
            data[name] = value.tolist()
    return data


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    service = _service(settings)
    record = service.get_curriculum(args.name)
    print(json.dumps({"type": "curriculum", "spec": record.spec}), file=out)
    for run in service.list_runs(args.name):
        print(json.dumps({"type": "run", "run_id": run.record.run_id,
                          "metadata": run.record.metadata}), file=out)
    for event in service.store.events(args.name):
        line = {"type": event.kind, "seq": event.seq, "idempotency_key": event.idempotency_key,
                "report": report_to_json(decode_report(event.payload))}
        print(json.dumps(line), file=out)
    return 0


def _lines(stream: TextIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(stream, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"line {number}: not JSON: {exc}") from exc


def cmd_import(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    service = _service(settings)
    name = None
    count = 0
    with open(args.file, encoding="utf-8") if args.file != "-" else sys.stdin as stream:
        for item in _lines(stream):
            if item["type"] == "curriculum":
                spec = dict(item["spec"])
                if args.name:
                    spec["name"] = args.name
                name = service.create_curriculum(spec, exist_ok=True).record.name
            elif name is None:
                raise SystemExit("the export must start with its curriculum line")
            elif item["type"] == "run":
                service.attach_run(name, item.get("metadata"), item["run_id"])
            elif item["type"] == "report":
                key = item.get("idempotency_key") or f"import:{item['seq']}"
                service.report(name, item["report"], key)
                count += 1
    print(f"imported {count} reports into {name}", file=out)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    service = _service(settings)
    record = service.get_curriculum(args.name)
    spec = CurriculumSpec.from_dict(record.spec)
    sampler = json.loads(args.sampler) if args.sampler and args.sampler.startswith("{") \
        else args.sampler
    weighting = json.loads(args.weighting) if args.weighting and \
        args.weighting.startswith("{") else args.weighting
    events = ((e.seq, decode_report(e.payload)) for e in service.store.events(args.name))
    points = replay(spec, events, sampler, weighting, every=args.every)
    names = spec.layout.names
    print(f"what-if: {record.spec['sampler']['kind']} -> {sampler or 'same sampler'}, "
          f"{record.spec['weighting']['kind']} -> {weighting or 'same weighting'}", file=out)
    print(f"{'seq':>6} {'TV':>6}  " + "  ".join(f"{n[:14]:>14}" for n in names)
          + "  weights (original -> alternative)", file=out)
    for p in points:
        cells = "  ".join(f"{a:>6.3f}->{b:<6.3f}" for a, b in
                          zip(p.original_probabilities, p.alternative_probabilities,
                              strict=True))
        weights = (f"{np.round(p.original_weights, 3).tolist()} -> "
                   f"{np.round(p.alternative_weights, 3).tolist()}")
        print(f"{p.seq:>6} {p.total_variation:>6.3f}  {cells}  {weights}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paceline-server", description=__doc__)
    parser.add_argument("--database-url", help="overrides PACELINE_DATABASE_URL")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP (and gRPC) service (default command)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--grpc-port", type=int, metavar="PORT",
                       help="also serve the gRPC API on this port (off when not given)")
    sub.add_parser("migrate", help="bring the database schema to the current revision")
    inspect = sub.add_parser("inspect", help="print a curriculum's state as a table")
    inspect.add_argument("name")
    export = sub.add_parser("export", help="write a curriculum's events as JSON lines")
    export.add_argument("name")
    load = sub.add_parser("import", help="load an export (creates the curriculum)")
    load.add_argument("file", help="path or - for stdin")
    load.add_argument("--name", help="import under another name")
    what_if = sub.add_parser("replay", help="what-if: re-run another strategy offline")
    what_if.add_argument("name")
    what_if.add_argument("--sampler", help="name or JSON spec")
    what_if.add_argument("--weighting", help="name or JSON spec")
    what_if.add_argument("--every", type=int, default=10, help="print every N reports")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
        if args.database_url:
            settings = settings.model_copy(update={"database_url": args.database_url})
        command = args.command or "serve"
        if command == "serve":
            if not hasattr(args, "host"):
                args.host = args.port = args.workers = args.grpc_port = None
            return cmd_serve(args, settings)
        if command == "migrate":
            return cmd_migrate(args, settings)
        handlers = {"inspect": cmd_inspect, "export": cmd_export, "import": cmd_import,
                    "replay": cmd_replay}
        return handlers[command](args, settings, out)
    except PacelineError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
