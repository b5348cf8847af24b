"""Memory a snapshot needs beyond the state: the single-blob path vs the streamed one.

For one large curriculum (default: `prioritized` over 10^7 samples, two distributions,
one report folded) it writes and reads a snapshot through a real store both ways, each
phase in a fresh process:

- `blob-write`: `engine.to_bytes()` stored whole (what the service did before the
  chunked snapshots of revision 0004, and what import still does);
- `stream-write`: `engine.snapshot_pieces()` stored in `--chunk-bytes` chunks;
- `blob-read`: `latest_snapshot` + `CurriculumEngine.from_bytes`;
- `stream-read`: `snapshot_stream` + `CurriculumEngine.from_chunks`.

For each it prints the peak of Python allocations (`tracemalloc`, which sees numpy
arrays and bytes) and the peak resident set (`VmHWM`, reset before the phase, which
also sees SQLite's and the driver's buffers), both over the state size and over the
memory in use before the phase. A read's peak includes the decoded state itself (1.0x):
the minimum any load needs.

    python benchmarks/snapshot_memory.py --samples 10000000
    python benchmarks/snapshot_memory.py --url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np

PHASES = ("blob-write", "stream-write", "blob-read", "stream-read")


def _rss_peak_reset() -> None:
    """Reset this process's peak RSS (Linux: `clear_refs` 5); harmless elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _spec(samples: int, sampler: str) -> Any:
    from paceline_server.domain import CurriculumSpec

    half = samples // 2
    return CurriculumSpec.from_dict({
        "name": "big", "objectives": ["acc"], "sampler": {"kind": sampler},
        "layout": {"distributions": [{"name": "a", "size": half},
                                     {"name": "b", "size": samples - half}]},
        "batch_size": 64})


def _engine(samples: int, sampler: str) -> Any:
    from paceline_server.domain.report import Report
    from paceline_server.engine import CurriculumEngine

    spec = _spec(samples, sampler)
    engine = CurriculumEngine(spec)
    batch = engine.next_batch("r", 0)
    engine.apply(Report.dense(run_id="r", step=0, indices=batch.indices,
                              rewards=np.ones((batch.indices.size, 4)),
                              layout=spec.layout, num_objectives=1))
    return engine


def _store(url: str, schema: str | None, chunk_bytes: int) -> Any:
    from paceline_server.store import open_store

    options: dict[str, Any] = {"auto_migrate": True, "snapshot_chunk_bytes": chunk_bytes}
    if schema is not None:
        options["schema"] = schema
    return open_store(url, **options)


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    """One phase in this process; the database holds the curriculum (and, for the read
    phases, the snapshot written by the matching write phase)."""
    from paceline_server.engine import CurriculumEngine

    store = _store(args.url, args.schema, args.chunk_bytes)
    engine = _engine(args.samples, args.sampler) if args.phase.endswith("write") else None
    spec = _spec(args.samples, args.sampler)
    state_bytes = round(_engine_state_bytes(engine, args))
    tracemalloc.start()
    base_traced = tracemalloc.get_traced_memory()[0]
    _rss_peak_reset()
    base_rss = _status("VmRSS")
    tracemalloc.reset_peak()
    started = time.perf_counter()
    name = "blob" if args.phase.startswith("blob") else "stream"
    if args.phase == "blob-write":
        with store.writer(name) as writer:
            writer.append("report", "r", 0, None, b"x")
            writer.put_snapshot(1, engine.to_bytes())
    elif args.phase == "stream-write":
        with store.writer(name) as writer:
            writer.append("report", "r", 0, None, b"x")
            writer.put_snapshot(1, engine.snapshot_pieces())
    elif args.phase == "blob-read":
        record = store.latest_snapshot(name)
        loaded = CurriculumEngine.from_bytes(spec, record.state)
        del record
    else:
        with store.snapshot_stream(name) as stream:
            loaded = CurriculumEngine.from_chunks(spec, stream.chunks)
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] - base_traced
    rss_peak = _status("VmHWM") - base_rss
    if args.phase.endswith("read"):
        state_bytes = round(loaded.state_bytes_per_sample() * args.samples)
    tracemalloc.stop()
    store.close()
    return {"phase": args.phase, "state_mb": state_bytes / 1e6,
            "traced_peak_mb": traced_peak / 1e6, "traced_ratio": traced_peak / state_bytes,
            "rss_peak_mb": rss_peak / 1e6, "rss_ratio": rss_peak / state_bytes,
            "seconds": seconds}


def _engine_state_bytes(engine: Any, args: argparse.Namespace) -> float:
    return 0.0 if engine is None else engine.state_bytes_per_sample() * args.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--sampler", default="prioritized")
    parser.add_argument("--chunk-bytes", type=int, default=4 << 20)
    parser.add_argument("--url", default=None,
                        help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--schema", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        print(json.dumps(run_phase(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'snapshots.db'}"
        schema = None
        if url.startswith("postgresql"):
            from sqlalchemy import create_engine, text

            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        store = _store(url, schema, args.chunk_bytes)
        store.create_curriculum("blob", {})
        store.create_curriculum("stream", {})
        store.close()
        try:
            print(f"{args.sampler}, {args.samples:,} samples, chunks of "
                  f"{args.chunk_bytes / 2**20:g} MiB, {url.split(':')[0]}")
            print(f"{'phase':<13} {'state MB':>9} {'traced peak':>17} {'RSS peak':>17} "
                  f"{'s':>6}")
            for phase in PHASES:
                command = [sys.executable, __file__, "--phase", phase, "--samples",
                           str(args.samples), "--sampler", args.sampler, "--chunk-bytes",
                           str(args.chunk_bytes), "--url", url]
                if schema is not None:
                    command += ["--schema", schema]
                out = subprocess.run(command, check=True, capture_output=True, text=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{phase:<13} {row['state_mb']:>9.1f} "
                      f"{row['traced_peak_mb']:>8.1f} MB {row['traced_ratio']:>5.2f}x "
                      f"{row['rss_peak_mb']:>8.1f} MB {row['rss_ratio']:>5.2f}x "
                      f"{row['seconds']:>6.2f}")
        finally:
            if schema is not None:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


if __name__ == "__main__":
    main()
