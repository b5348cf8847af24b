"""`paceline-server`: serve, migrate, repair, inspect, export/import, what-if replay.

`inspect`, `export`, `import` and `replay` work on a database (`--database-url`, else
PACELINE_DATABASE_URL, else ./paceline.db) or on a running service over its REST API
(`--url`, else PACELINE_URL; `--token`, else PACELINE_TOKEN). Only `serve`, `migrate` and
`import` create a missing SQLite database; the others say which one is missing. Errors
are one line on stderr: exit status 2 for an error Paceline answered (with its code),
1 for anything else (a missing file or database, an unreachable service).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np

from paceline_server.adapters.redis_coordination import coordinator_from_settings
from paceline_server.app.codec import decode_report
from paceline_server.app.replay import replay
from paceline_server.app.service import PacelineService
from paceline_server.domain.errors import PacelineError
from paceline_server.domain.spec import CurriculumSpec
from paceline_server.settings import Settings

if TYPE_CHECKING:  # imported lazily: gRPC is loaded only when serving it
    from paceline_server.grpc.server import GrpcServer
    from paceline_server.remote import RemoteService
    from paceline_server.transport.metrics import Metrics
    from paceline_server.transport.ratelimit import RateLimiter


def _service(settings: Settings) -> PacelineService:
    from paceline_server.store import open_store

    store = open_store(settings.database_url, **settings.store_options())
    return PacelineService(store, settings,
                           coordinator=coordinator_from_settings(settings))


#: Said at start when gRPC runs beside several workers (docs/deployment.md, "Metrics").
UNCOUNTED_GRPC = ("warning: with --workers > 1 the gRPC API runs in this parent process, "
                  "which serves no /metrics: gRPC calls are not counted in the request "
                  "panels; run one worker per process (or pod) to see them")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    updates = {k: v for k, v in (("host", args.host), ("port", args.port),
                                 ("workers", args.workers),
                                 ("grpc_port", getattr(args, "grpc_port", None)))
               if v is not None}
    settings = settings.updated(**updates)
    # The host names REST answers to follow from the address it listens on, known here.
    settings = settings.updated(allowed_hosts=settings.serving_hosts())
    grpc_server: GrpcServer | None = None
    if settings.workers > 1:
        # Workers import the app by factory and read settings from the environment; the
        # gRPC server (if any) runs in this parent process with its own service object.
        os.environ["PACELINE_DATABASE_URL"] = settings.database_url
        os.environ["PACELINE_ALLOWED_HOSTS"] = json.dumps(settings.allowed_hosts)
        grpc_service = _service(settings) if settings.grpc_port is not None else None
        if grpc_service is not None:
            grpc_server = _start_grpc(grpc_service, settings)
            print(UNCOUNTED_GRPC, file=sys.stderr, flush=True)
        try:
            with _startup_failure_as_error(settings):
                uvicorn.run("paceline_server.api.app:create_app", factory=True,
                            host=settings.host, port=settings.port,
                            workers=settings.workers, log_level=settings.log_level)
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
        with _terminated_as_stop():
            app = create_app(settings, store)
            service = app.state.service
            if settings.grpc_port is not None:
                grpc_server = _start_grpc(app.state.service, settings, app.state.metrics,
                                          app.state.rate_limiter)
            with _startup_failure_as_error(settings):
                uvicorn.run(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level)
    finally:
        if grpc_server is not None:
            grpc_server.stop()
        if service is not None:
            service.close()  # its coordinator's threads and Redis connections
        store.close()
    return 0


#: uvicorn's exit status when it could not start (e.g. the port is taken).
UVICORN_STARTUP_FAILURE = 3


@contextmanager
def _startup_failure_as_error(settings: Settings) -> Iterator[None]:
    """uvicorn exits 3 when it cannot start (a port in use, an address that does not
    resolve), which `paceline-server` documents as `repair`'s status: such a failure is
    an error line and exit 1, as every other one."""
    try:
        yield
    except SystemExit as exc:
        if exc.code != UVICORN_STARTUP_FAILURE:
            raise
        raise CliError(f"the REST API could not start on {settings.host}:{settings.port} "
                       "(uvicorn's message above says why)") from None


class _Stop(Exception):
    """SIGTERM, after uvicorn's graceful shutdown (or before it started)."""


@contextmanager
def _terminated_as_stop() -> Iterator[None]:
    """Let SIGTERM end `serve` through its cleanup. uvicorn shuts down gracefully on it
    and then raises it again for the handler it found, which by default killed the
    process before the gRPC server was drained and the store closed (exit -15); with
    this handler that second signal ends the block instead, and `serve` exits 0 as it
    does on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_grpc(service: PacelineService, settings: Settings,
                metrics: Metrics | None = None,
                limiter: RateLimiter | None = None) -> GrpcServer:
    """Start the gRPC API beside uvicorn (stopped by the caller after uvicorn returns);
    with the REST app's metrics and rate limiter when they share the process."""
    from paceline_server.grpc.server import create_server

    server = create_server(service, settings, metrics=metrics, limiter=limiter)
    server.start()
    print(f"paceline gRPC API on {settings.host}:{server.port}", file=sys.stderr, flush=True)
    return server


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from paceline_server.store.migrate import current_revision, upgrade

    upgrade(settings.database_url)
    print(f"schema at revision {current_revision(settings.database_url)}")
    return 0


class CliError(Exception):
    """A problem the CLI reports as one line and exit status 1 (not a Paceline error)."""


# ---------------------------------------------------------------------------- where
def sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite URL (None for another backend or an in-memory database)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") \
            or url.query.get("mode") == "memory":
        return None
    return Path(url.database)


@contextmanager
def local_service(settings: Settings, *, create: bool) -> Iterator[PacelineService]:
    """A service on the configured database. Unless `create`, a missing SQLite file is
    an error naming it. The schema of an existing database is checked, never migrated
    (`SCHEMA_OUTDATED` names `migrate`), by every command, `import` included: a read-only
    command run from the wrong directory must not leave a fresh database behind, and
    a write must not upgrade a database behind the operator's back."""
    from paceline_server.store import Store, open_store

    options = settings.store_options()
    path = sqlite_file(settings.database_url)
    if not create and path is not None and not path.is_file():
        raise CliError(
            f"database {path.resolve()} does not exist (choose one with --database-url "
            "or PACELINE_DATABASE_URL, or a running service with --url)")
    # Only a SQLite file this command creates is migrated (from nothing).
    fresh = create and path is not None and not path.exists()
    created = fresh and settings.migrate_on_start
    if not created:
        options["auto_migrate"] = False
    store: Store | None = None
    service: PacelineService | None = None
    failed = False
    try:
        # Inside the block: a fresh file that cannot be opened as a store (not migrated
        # with PACELINE_AUTO_MIGRATE=false) is removed as any refused import's is.
        store = open_store(settings.database_url, **options)
        service = PacelineService(store, settings,
                                  coordinator=coordinator_from_settings(settings))
        yield service
    except BaseException:
        failed = True
        raise
    finally:
        if service is not None:
            service.close()
        if store is not None:
            store.close()
        if fresh and path is not None:
            if failed:  # a refused import leaves no database behind, not an empty one
                for leftover in (path, path.with_name(f"{path.name}-wal"),
                                 path.with_name(f"{path.name}-shm")):
                    leftover.unlink(missing_ok=True)
            else:
                print(f"created database {path.resolve()}", file=sys.stderr)


@contextmanager
def remote_service(url: str, token: str | None) -> Iterator[RemoteService]:
    """The service at `url` (the client package is imported only for remote commands)."""
    from paceline_server.remote import RemoteService

    try:
        remote = RemoteService(url, token)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with remote:
        yield remote


# ---------------------------------------------------------------------------- repair
#: Exit status of `repair` when rows still need attention (listed, not errors).
REPAIR_LEFT = 3


def _spec_problem(spec: dict[str, Any]) -> str | None:
    """Why a stored spec cannot be loaded: parsed, and its strategies built (their
    parameter checks), without allocating any state."""
    from paceline_server.strategies.registry import build_sampler, build_weighting

    try:
        parsed = CurriculumSpec.from_dict(spec)
        build_sampler(parsed.sampler, parsed.layout, parsed.objectives)
        build_weighting(parsed.weighting, parsed.objectives)
    except PacelineError as exc:
        return exc.message
    except (ValueError, TypeError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _report_check(spec: dict[str, Any]) -> Callable[[bytes], str | None]:
    """For a loadable spec: why a stored report would be refused when folded today."""
    parsed = CurriculumSpec.from_dict(spec)

    def problem(payload: bytes) -> str | None:
        try:
            decode_report(payload).validate(parsed.layout, len(parsed.objectives))
        except PacelineError as exc:
            return exc.message
        return None

    return problem


def cmd_repair(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Rows older versions stored that cannot be rendered or reached (store/repair.py):
    fixed in one transaction, or with --dry-run only listed. Exit status 0 when nothing
    is left to do, REPAIR_LEFT when something is (to repair, or to decide by hand)."""
    from paceline_server.store.migrate import check_schema, migration_connection
    from paceline_server.store.repair import repair

    path = sqlite_file(settings.database_url)
    if path is not None and not path.is_file():
        raise CliError(f"database {path.resolve()} does not exist (choose one with "
                       "--database-url or PACELINE_DATABASE_URL)")
    check_schema(settings.database_url)
    apply = not args.dry_run
    with migration_connection(settings.database_url) as conn:
        findings = repair(conn, apply=apply, spec_problem=_spec_problem,
                          report_check=_report_check)
    for finding in findings:
        print(finding.line(apply), file=out)
    left = [f for f in findings if f.action is None or not apply]
    fixed = len(findings) - len([f for f in findings if f.action is None])
    if not findings:
        print("nothing to repair: every stored row renders", file=out)
    elif apply:
        print(f"{fixed} repaired, {len(left)} cannot be repaired", file=out)
    else:
        print(f"dry run: {fixed} would be repaired, {len(findings) - fixed} cannot be; "
              "nothing was changed", file=out)
    return REPAIR_LEFT if left else 0


# ---------------------------------------------------------------------------- inspect
class _Health(Protocol):
    @property
    def stalled(self) -> bool: ...
    @property
    def saturated(self) -> bool: ...
    @property
    def hopeless(self) -> bool: ...


class _Stats(Protocol):
    """A distribution's row: the server's `DistributionStats` or the client's."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def probability(self) -> float: ...
    @property
    def success(self) -> float | None: ...
    @property
    def mean_abs_advantage(self) -> float | None: ...
    @property
    def learning_progress(self) -> float: ...
    @property
    def zero_variance_fraction(self) -> float | None: ...
    @property
    def sampled(self) -> int: ...
    @property
    def health(self) -> _Health: ...


def print_inspection(out: TextIO, name: str, seq: int, spec: dict[str, Any],
                     weights: Iterable[tuple[str, float]], scale: float,
                     distributions: Iterable[_Stats]) -> None:
    print(f"curriculum {name}  seq {seq}  sampler {spec['sampler']['kind']}  "
          f"weighting {spec['weighting']['kind']}", file=out)
    text = ", ".join(f"{o}={w:.3f}" for o, w in weights)
    print(f"reward weights: {text}  scale {scale:.3f}", file=out)
    header = (f"{'distribution':<20} {'size':>9} {'P':>7} {'success':>8} {'|A|':>7} "
              f"{'LP':>7} {'zero-var':>8} {'sampled':>9}  flags")
    print(header, file=out)
    print("-" * len(header), file=out)

    def fmt(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"

    for d in distributions:
        flags = ",".join(f for f in ("stalled", "saturated", "hopeless")
                         if getattr(d.health, f))
        print(f"{d.name:<20} {d.size:>9} {d.probability:>7.3f} {fmt(d.success, 8)} "
              f"{fmt(d.mean_abs_advantage, 7)} {d.learning_progress:>7.3f} "
              f"{fmt(d.zero_variance_fraction, 8)} {d.sampled:>9}  {flags}", file=out)


def print_explanations(out: TextIO, explanations: Iterable[Any]) -> None:
    """Why each distribution gets its probability: the sentence, then the numbers."""
    shown = list(explanations)
    if not shown:
        return
    print("\nwhy:", file=out)
    for e in shown:
        print(f"  {e.sentence}", file=out)
        terms = "  ".join(f"{k}={'-' if v is None else f'{v:.4g}'}" for k, v in e.terms.items())
        if terms:
            print(f"      {terms}", file=out)


def cmd_inspect(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.url:
        with remote_service(args.url, args.token) as remote:
            info = remote.curriculum(args.name)
            state = remote.state(args.name)
        print_inspection(out, info.name, state.seq, info.spec,
                         state.reward_weights.items(), state.reward_scale,
                         state.distributions)
        print_explanations(out, state.explanations)
        return 0
    with local_service(settings, create=False) as service:
        record, view = service.inspect(args.name)
    print_inspection(out, record.name, view.clock, record.spec,
                     zip(view.objectives, view.reward_weights, strict=True),
                     view.reward_scale, view.distributions)
    print_explanations(out, view.explanations)
    return 0


# ---------------------------------------------------------------------------- export
def _binary(out: TextIO) -> Callable[[bytes], object]:
    """Write UTF-8 bytes to `out` (straight to its buffer when it has one, so the
    terminal's encoding cannot refuse a run id)."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        return lambda data: out.write(data.decode("utf-8"))
    out.flush()
    return buffer.write


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from paceline_server.app.transfer import export_curriculum

    write = _binary(out)
    if args.url:
        with remote_service(args.url, args.token) as remote:
            response = remote.export(args.name)
            try:
                for chunk in response.iter_bytes():
                    write(chunk)
            finally:
                response.close()
    else:
        with local_service(settings, create=False) as service:
            for line in export_curriculum(service, args.name):
                write(line)
    out.flush()
    return 0


# ---------------------------------------------------------------------------- import
def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def describe_import(result: dict[str, Any]) -> str:
    """One line saying what an import changed, from `ImportResult`'s fields."""
    verb = "created" if result["created"] else "merged into"
    return (f"{verb} curriculum {result['name']} (seq {result['seq']}): "
            f"{result['reports_added']} new reports, {result['reports_present']} already "
            f"present; {result['runs_added']} new runs, {result['runs_present']} already "
            "present")


def cmd_import(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from dataclasses import asdict

    from paceline_server.app.engines import check_distributions, check_state_budget
    from paceline_server.app.transfer import import_curriculum, read_export, read_lines

    data = _read_input(args.file)
    if args.url:
        with remote_service(args.url, args.token) as remote:
            result = remote.import_export(data, args.name, args.merge)
    else:
        def admit(spec: CurriculumSpec) -> None:  # the service's limits, before the
            check_distributions(spec, settings.max_distributions)  # engine is built
            check_state_budget(spec, settings.max_state_bytes)

        export = read_export(read_lines(data.splitlines()), args.name,
                             admit)  # before any database
        del data
        with local_service(settings, create=True) as service:
            result = asdict(import_curriculum(service, export, merge=args.merge))
    print(describe_import(result), file=out)
    return 0


# ---------------------------------------------------------------------------- replay
REPLAY_NOTE = """\
# Off-policy: the stored reports came from batches the original strategies chose. The
# alternative is shown the same evidence; it is not what it would have produced online
# (its own batches would have drawn other samples and seen other rewards).
# seq: reports folded so far. TV: total variation distance between the two sampling
# mixes (0 = the same mix, 1 = disjoint). Then, per distribution, its sampling
# probability original->alternative, and the reward weights (objective order)
# original -> alternative."""


def _strategy(value: str | None) -> Any:
    """A strategy given as a name or as a JSON spec."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"not a JSON strategy spec: {exc}") from None


def cmd_replay(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    sampler, weighting = _strategy(args.sampler), _strategy(args.weighting)
    if args.url:
        from paceline_server.app.transfer import read_header, read_lines, read_reports
        from paceline_server.remote import lines

        with remote_service(args.url, args.token) as remote:
            items = read_lines(lines(remote.export(args.name)))
            header = read_header(items)
            reports = ((seq, report) for _, seq, _, report in read_reports(items, header))
            spec = header.spec
            points = replay(spec, reports, sampler, weighting, every=args.every)
    else:
        with local_service(settings, create=False) as service:
            record = service.get_curriculum(args.name)
            spec = CurriculumSpec.from_dict(record.spec)
            events = ((e.seq, decode_report(e.payload))
                      for e in service.store.events(args.name))
            points = replay(spec, events, sampler, weighting, every=args.every,
                            head=record.head_seq)
    data = spec.to_dict()
    print(f"# what-if replay of {spec.name} ({points[-1].seq} reports): sampler "
          f"{data['sampler']['kind']} -> {_kind(sampler)}, weighting "
          f"{data['weighting']['kind']} -> {_kind(weighting)}", file=out)
    print(REPLAY_NOTE, file=out)
    names = spec.layout.names
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


def _kind(strategy: Any) -> str:
    if strategy is None:
        return "(the same)"
    return str(strategy.get("kind", strategy) if isinstance(strategy, dict) else strategy)


# ---------------------------------------------------------------------------- parser
def _add_remote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="a running service's URL (else PACELINE_URL): work "
                        "through its REST API instead of a database")
    parser.add_argument("--token", help="bearer token for --url (else PACELINE_TOKEN); "
                        "read scope, write scope for import")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paceline-server", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="overrides PACELINE_DATABASE_URL")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP (and gRPC) service (default command)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--grpc-port", type=int, metavar="PORT",
                       help="also serve the gRPC API on this port (off when not given)")
    sub.add_parser("migrate", help="bring the database schema to the current revision "
                   "(creates a missing SQLite database)")
    fix = sub.add_parser(
        "repair", help="fix stored rows older versions wrote that cannot be rendered "
        "(run metadata, specs, names, idempotency keys); lists what it cannot fix")
    fix.add_argument("--dry-run", action="store_true",
                     help="only list what would change; change nothing")
    inspect = sub.add_parser("inspect", help="print a curriculum's state as a table")
    inspect.add_argument("name")
    export = sub.add_parser(
        "export", help="write a curriculum (spec, runs, reports) as JSON lines to stdout")
    export.add_argument("name")
    load = sub.add_parser(
        "import", help="load an export in one transaction (all or nothing); creates the "
        "curriculum, and a missing SQLite database")
    load.add_argument("file", help="path or - for stdin")
    load.add_argument("--name", help="import under another name")
    load.add_argument("--merge", action="store_true",
                      help="add to an existing curriculum of the same spec the reports it "
                      "lacks (by idempotency key); without it an existing one is refused")
    what_if = sub.add_parser(
        "replay", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="what-if: fold the stored reports into other strategies (off-policy)",
        description="Fold a curriculum's stored reports, in log order, into its own\n"
        "strategies and into the alternative ones, and print both sampling mixes and\n"
        "reward weights every N reports.\n\n"
        + REPLAY_NOTE.replace("# ", "").replace("#", ""))
    what_if.add_argument("name")
    what_if.add_argument("--sampler", help="name or JSON spec (default: the same sampler)")
    what_if.add_argument("--weighting", help="name or JSON spec (default: the same weighting)")
    what_if.add_argument("--every", type=int, default=10, help="print every N reports")
    for command in (inspect, export, load, what_if):
        _add_remote(command)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "serve"
    if command in ("inspect", "export", "import", "replay"):
        if args.url and args.database_url:
            parser.error("give --url (a running service) or --database-url (a database), "
                         "not both")
        if not args.url and not args.database_url:
            args.url = os.environ.get("PACELINE_URL") or None
    try:
        settings = Settings()
        if args.database_url:
            settings = settings.updated(database_url=args.database_url)
        if command == "serve":
            if not hasattr(args, "host"):
                args.host = args.port = args.workers = args.grpc_port = None
            return cmd_serve(args, settings)
        if command == "migrate":
            return cmd_migrate(args, settings)
        if command == "repair":
            return cmd_repair(args, settings, out)
        if command != "import":
            # The API's check of a name looked up, on a database too: both ways refuse
            # the same names (INVALID_REQUEST), and none reaches a driver or a URL.
            from paceline_server.app.operations import check_name

            check_name(args.name)
        handlers = {"inspect": cmd_inspect, "export": cmd_export, "import": cmd_import,
                    "replay": cmd_replay}
        return handlers[command](args, settings, out)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `export | head`: the reader has what it wanted
        return 1
    except Exception as exc:
        status, line = _describe(exc, args)
        if status == 1 and args.debug:
            raise
        print(line, file=sys.stderr)
        return status


def _describe(exc: Exception, args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, one line) for an error: 2 with its code for an error Paceline
    answered (in this process, or a service's response), 1 for anything else."""
    import httpx
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from paceline.errors import PacelineError as ServiceError
    from paceline.errors import TransportError
    from paceline_server.remote import NotPaceline

    if isinstance(exc, PacelineError | ServiceError) and not isinstance(exc, TransportError):
        return 2, f"error {exc.code}: {_one_line(exc.message)}"
    if isinstance(exc, TransportError | httpx.HTTPError):
        text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return 1, "error: " + _one_line(f"cannot reach {args.url}: {text}")
    if isinstance(exc, CliError | NotPaceline):
        return 1, "error: " + _one_line(str(exc))
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = tuple(first.get("loc", ()))
        if loc[:1] == ("api_tokens",):  # the rest of it is a token: never printed
            loc = loc[:1]
        where = ".".join(str(p) for p in loc)
        return 1, "error: " + _one_line(f"invalid setting {where}: {first.get('msg')}")
    if isinstance(exc, SettingsError):  # a structured variable that is not JSON
        return 1, "error: " + _one_line(
            f"{exc} (PACELINE_API_TOKENS is a JSON object, e.g. "
            '{"my-token": "write", "ro-token": "read"})')
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return 1, "error: " + _one_line(
        f"{type(exc).__name__}: {text} (--debug shows the traceback)")


if __name__ == "__main__":
    raise SystemExit(main())
