"""gRPC vs REST on one `paceline-server serve --port P --grpc-port G` process.

One cycle = report 1024 prompts x 8 rollouts x 3 objectives, then ask for the next batch
of 1024 — the training-step round trip of service_bench.py — over each transport, in the
same run, interleaved in rounds so drift hits every case alike:
- wire cases (`rest-json`, `rest-msgpack`, `grpc`): the request is built before the clock
  starts, so they time transport + server (JSON nested lists, msgpack typed arrays,
  protobuf packed float32);
- SDK cases (`client-http-json`, `client-http-msgpack`, `client-grpc`): `paceline.Client`
  from a float32 numpy array to a `Batch`, encoding included — what a trainer sees.
Then cycles/s with `--runs` concurrent SDK runs per transport. Prints one JSON object per
case. SQLite runs with synchronous=NORMAL by default so fsyncs do not hide the transport
(pass --synchronous FULL for the durable setting).

    python benchmarks/grpc_vs_rest.py [--cycles 300] [--rounds 6] [--runs 4 --seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "service")]

import paceline  # noqa: E402
from local_service import local_service  # noqa: E402
from paceline import _grpc_codec  # noqa: E402
from paceline import _grpc_pb2 as pb  # noqa: E402
from paceline._payloads import ReportEncoding  # noqa: E402
from service_bench import B, G, K, spec, typed  # noqa: E402

METHOD = "/paceline.v1.Paceline/{}"


@contextmanager
def server(db: str, synchronous: str) -> Iterator[tuple[str, str]]:
    """The server with both APIs; yields (REST base URL, gRPC target)."""
    with local_service(f"sqlite:///{db}", {"PACELINE_SQLITE_SYNCHRONOUS": synchronous},
                       grpc=True) as service:
        assert service.grpc_target is not None
        yield service.url, service.grpc_target


class Case:
    """One transport's cycle: `prepare` draws the rewards (and for wire cases builds the
    request from them), untimed; `send`, timed, runs report + next batch and returns the
    next indices (for SDK cases the client's encoding happens there)."""

    encoding_timed = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.step = 0
        self.rng = np.random.default_rng(0)
        self.indices: list[int] = []
        self.times: list[float] = []

    def rewards(self) -> np.ndarray:
        return self.rng.integers(0, 2, (len(self.indices), G, K)).astype(np.float32)

    def prepare(self) -> Any:
        raise NotImplementedError

    def send(self, prepared: Any) -> list[int]:
        raise NotImplementedError

    def cycle(self) -> None:
        prepared = self.prepare()
        start = time.perf_counter()
        self.indices = self.send(prepared)
        self.times.append((time.perf_counter() - start) * 1e3)
        self.step += 1

    def close(self) -> None:
        pass


class RestCase(Case):
    def __init__(self, base: str, encoding: str) -> None:
        super().__init__(f"rest-{encoding}")
        self.encoding = encoding
        self.http = httpx.Client(base_url=base, timeout=60)
        self.http.post("/v1/curricula", json=spec(self.name)).raise_for_status()
        self.http.post(f"/v1/curricula/{self.name}/runs", json={"run_id": "r"})
        self.indices = self.batch(0)

    def batch(self, step: int) -> list[int]:
        answer = self.http.post(f"/v1/curricula/{self.name}/batches",
                                json={"run_id": "r", "step": step})
        answer.raise_for_status()
        return list(answer.json()["indices"])

    def prepare(self) -> tuple[bytes, str]:
        rewards = self.rewards()
        if self.encoding == "msgpack":
            body = {"run_id": "r", "step": self.step, "indices": typed(np.asarray(self.indices)),
                    "rewards": typed(rewards)}
            return msgpack.packb(body), "application/msgpack"
        body = {"run_id": "r", "step": self.step, "indices": self.indices,
                "rewards": rewards.tolist()}
        return json.dumps(body).encode(), "application/json"

    def send(self, prepared: tuple[bytes, str]) -> list[int]:
        content, media = prepared
        self.http.post(f"/v1/curricula/{self.name}/reports", content=content, headers={
            "Content-Type": media, "Idempotency-Key": f"r/{self.step}"}).raise_for_status()
        return self.batch(self.step + 1)

    def close(self) -> None:
        self.http.close()


class GrpcCase(Case):
    def __init__(self, target: str) -> None:
        super().__init__("grpc")
        self.channel = grpc.insecure_channel(target)

        def stub(method: str) -> Callable[..., Any]:
            return self.channel.unary_unary(
                METHOD.format(method), request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=_grpc_codec.response_class(method).FromString)

        self.report_call, self.batch_call = stub("Report"), stub("NextBatch")
        stub("CreateCurriculum")(pb.CreateCurriculumRequest(spec_json=json.dumps(
            spec(self.name))))
        stub("AttachRun")(pb.AttachRunRequest(curriculum=self.name, run_id="r"))
        self.indices = list(self.batch_call(pb.NextBatchRequest(
            curriculum=self.name, run_id="r", step=0)).indices)

    def prepare(self) -> pb.ReportRequest:
        rewards = self.rewards()
        return pb.ReportRequest(curriculum=self.name, run_id="r", step=self.step,
                                indices=self.indices, idempotency_key=f"r/{self.step}",
                                rewards=pb.Array.FromString(_grpc_codec.pack(rewards)))

    def send(self, prepared: pb.ReportRequest) -> list[int]:
        self.report_call(prepared, timeout=60)
        return list(self.batch_call(pb.NextBatchRequest(
            curriculum=self.name, run_id="r", step=self.step + 1), timeout=60).indices)

    def close(self) -> None:
        self.channel.close()


class ClientCase(Case):
    encoding_timed = True  # `paceline.Client` encodes the array inside `send`

    def __init__(self, url: str, name: str, encoding: ReportEncoding = "json") -> None:
        super().__init__(name)
        self.client = paceline.Client(url, timeout=60, report_encoding=encoding)
        cur = self.client.create_curriculum(self.name, **_sdk_spec())
        self.run = cur.start_run(run_id="r", heartbeat_interval=None)
        self.indices = self.run.next_batch(0).indices

    def prepare(self) -> np.ndarray:
        return self.rewards()

    def send(self, rewards: np.ndarray) -> list[int]:
        self.run.report(self.step, self.indices, rewards)
        return self.run.next_batch(self.step + 1).indices

    def close(self) -> None:
        self.client.close()


def _sdk_spec() -> dict[str, Any]:
    full = spec("x")
    return {"distributions": full["layout"]["distributions"],
            "objectives": full["objectives"], "batch_size": B}


def latency(cases: list[Case], cycles: int, rounds: int) -> list[dict[str, Any]]:
    per_round = max(1, cycles // rounds)
    for case in cases:  # warm-up: connections, engine cache, JIT-free but cold paths
        for _ in range(5):
            case.cycle()
        case.times.clear()
    for _ in range(rounds):
        for case in cases:
            for _ in range(per_round):
                case.cycle()
    results = []
    for case in cases:
        times = np.asarray(case.times)
        results.append({"case": case.name, "cycles": len(times),
                        "encoding_timed": case.encoding_timed,
                        "p50_ms": round(float(np.percentile(times, 50)), 2),
                        "p99_ms": round(float(np.percentile(times, 99)), 2),
                        "mean_ms": round(float(times.mean()), 2)})
        case.close()
    return results


def throughput(url: str, label: str, runs: int, seconds: float) -> dict[str, Any]:
    name = f"tp-{label}"
    with paceline.Client(url) as client:
        client.create_curriculum(name, **_sdk_spec())
    done = [0] * runs
    # Every run attaches and takes its first batch before the clock starts (set-up is
    # not throughput); a run that fails on the way breaks the barrier.
    window: list[float] = []
    ready = threading.Barrier(runs + 1, lambda: window.append(time.perf_counter()),
                              timeout=120)

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        encoding: ReportEncoding = "msgpack" if label == "http" else "json"
        try:
            client = paceline.Client(url, timeout=60, report_encoding=encoding)
            run = client.curriculum(name).start_run(run_id=f"run-{i}", heartbeat_interval=None)
            indices = run.next_batch(0).indices
        except BaseException:
            ready.abort()
            raise
        with client:
            ready.wait()
            stop = window[0] + seconds
            step = 0
            while time.perf_counter() < stop:
                rewards = rng.integers(0, 2, (len(indices), G, K)).astype(np.float32)
                run.report(step, indices, rewards)
                indices = run.next_batch(step + 1).indices
                step += 1
                done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    ready.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - window[0]
    return {"case": f"concurrent-{label}", "runs": runs, "cycles": sum(done),
            "cycles_per_s": round(sum(done) / elapsed, 1)}


def machine() -> dict[str, Any]:
    return {"case": "machine", "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "grpcio": grpc.__version__,
            "date": datetime.now(UTC).date().isoformat()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.rounds, args.runs, args.seconds = 6, 2, 2, 1.0
    print(json.dumps({**machine(), "synchronous": args.synchronous}), flush=True)
    with tempfile.TemporaryDirectory() as tmp, \
            server(f"{tmp}/bench.db", args.synchronous) as (base, target):
        grpc_url = f"grpc://{target}"
        cases: list[Case] = [
            RestCase(base, "json"), RestCase(base, "msgpack"), GrpcCase(target),
            ClientCase(base, "client-http-json"),
            ClientCase(base, "client-http-msgpack", "msgpack"),
            ClientCase(grpc_url, "client-grpc")]
        for result in latency(cases, args.cycles, args.rounds):
            print(json.dumps(result), flush=True)
        for url, label in ((base, "http"), (grpc_url, "grpc")):
            print(json.dumps(throughput(url, label, args.runs, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
