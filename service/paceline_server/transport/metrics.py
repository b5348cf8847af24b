"""Prometheus metrics of every transport: requests, latency and errors labelled by
`transport` (`rest` or `grpc`), the use cases' counters (reports, retried reports,
batches, rollouts, refills) and curriculum gauges computed at scrape time from the
engines this process holds. One registry per process, served by REST's /metrics, so a
gRPC call shows in the same series as a REST one.

Labels stay bounded: `route` is a REST route template or a gRPC method, `status` the HTTP
status (for gRPC, the one the shared error table gives the error: what REST would have
answered), `code` a stable error code.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from paceline_server.app.service import PacelineService, ReportAck
from paceline_server.domain.errors import PacelineError
from paceline_server.transport.coordination_metrics import CoordinationCollector

Transport = Literal["rest", "grpc"]
_log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self, service: PacelineService, max_distributions: int) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "paceline_http_requests", "requests by transport (rest, grpc), method, route "
            "and HTTP status (gRPC: the status REST would answer)",
            ["transport", "method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "paceline_http_request_seconds", "request latency by transport, method, route",
            ["transport", "method", "route"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.errors = Counter(
            "paceline_request_errors", "requests answered with an error, by transport, "
            "route and stable error code", ["transport", "route", "code"],
            registry=self.registry)
        self.reports = Counter("paceline_reports", "reports applied",
                               ["curriculum"], registry=self.registry)
        self.replays = Counter(
            "paceline_report_replays", "retried reports answered with the ack of the "
            "report already applied (not counted in paceline_reports)",
            ["curriculum"], registry=self.registry)
        self.batches = Counter("paceline_batches", "batches served",
                               ["curriculum"], registry=self.registry)
        self.rollouts = Counter(
            "paceline_rollouts", "rollouts reported: kind=generated counts every one, "
            "kind=trained those not in groups the trainer dropped (dynamic sampling)",
            ["curriculum", "kind"], registry=self.registry)
        self.refills = Counter("paceline_refills", "refill parts served (dynamic sampling)",
                               ["curriculum"], registry=self.registry)
        self.registry.register(CurriculumCollector(service, max_distributions))
        self.registry.register(CoordinationCollector(service.coordinator))
        #: (metric, labels) -> its series, so each call skips `labels()` (a lock and
        #: label checks, about 1 µs, seven times per report); `forget` empties it.
        self._series: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._dropping = threading.Lock()  # held by the one `drop_deleted` running

    def series(self, metric: Counter | Histogram, *labels: str) -> Any:
        """The child of `metric` for `labels` (the same object `metric.labels` gives)."""
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def observe(self, transport: Transport, method: str, route: str, status: int,
                seconds: float, error_code: str | None = None) -> None:
        """One request: counted, timed and, when it failed, counted by its error code."""
        self.series(self.requests, transport, method, route, str(status)).inc()
        self.series(self.latency, transport, method, route).observe(seconds)
        if error_code is not None:
            self.series(self.errors, transport, route, error_code).inc()

    def reported(self, name: str, ack: ReportAck) -> None:
        """A report applied, or a retry of one answered with its ack (counted as a
        retry: its report and rollouts were counted when applied), with the batch it
        asked for."""
        if ack.replayed:
            self.series(self.replays, name).inc()
        else:
            self.series(self.reports, name).inc()
            self.series(self.rollouts, name, "generated").inc(ack.rollouts_generated)
            self.series(self.rollouts, name, "trained").inc(ack.rollouts_trained)
        if ack.batch is not None:
            self.series(self.batches, name).inc()

    def served(self, name: str, part: int = 0) -> None:
        """A batch served: a step's batch (part 0) or a refill part."""
        self.series(self.batches, name).inc()
        if part:
            self.series(self.refills, name).inc()

    def drop_deleted(self) -> None:
        """Forget the series of curricula deleted through another process (a replica or
        worker on the same database), which nothing tells this one about: without this
        its /metrics kept their gauges and counters, and the state of a curriculum
        deleted and created again elsewhere, for as long as it cached the engine.

        Reads the store, so /metrics runs it after answering (the series go by the next
        scrape), one at a time, and keeps every series when the store does not answer:
        a scrape must not wait on, nor fail with, a database that is down."""
        if not self._dropping.acquire(blocking=False):
            return  # another scrape is at it
        try:
            names = {labels[0] for counter in self._curriculum_counters()
                     for labels in list(counter._metrics)}
            try:
                gone = self.service.drop_deleted(names)
            except PacelineError as exc:
                _log.debug("deleted curricula not checked: %s", exc)
                return
            for name in gone:
                self.forget(name)
        finally:
            self._dropping.release()

    def _curriculum_counters(self) -> list[Counter]:
        return [counter for counter in vars(self).values() if isinstance(counter, Counter)
                and counter._labelnames[:1] == ("curriculum",)]

    def forget(self, curriculum: str) -> None:
        """Drop every counter series of a deleted curriculum, so create/delete cycles
        leave no stale series (a recreated curriculum counts from zero). The gauges need
        nothing: they are read from the cached engines, which delete drops."""
        for counter in self._curriculum_counters():
            for labels in [key for key in list(counter._metrics) if key[0] == curriculum]:
                counter.remove(*labels)
        self._series.clear()  # a removed series must not be counted on


class CurriculumCollector(Collector):
    """Gauges per curriculum and distribution, read from the cached engines.

    Read through `progress` (the arrays the history keeps) rather than `inspect`, which
    builds an object and an explanation for every distribution: about 0.2 s for 10,000
    of them, under the engine's lock (its reports and batches wait), per curriculum and
    scrape, for gauges of the first `max_distributions` only."""

    def __init__(self, service: PacelineService, max_distributions: int) -> None:
        self.service = service
        self.max_distributions = max_distributions

    def collect(self) -> Iterator[Metric]:
        cur = ["curriculum"]
        dist = ["curriculum", "distribution"]
        families = {
            "seq": GaugeMetricFamily("paceline_curriculum_seq", "reports folded", labels=cur),
            "scale": GaugeMetricFamily("paceline_reward_scale", "reward scale", labels=cur),
            "weight": GaugeMetricFamily("paceline_reward_weight", "reward weight",
                                        labels=["curriculum", "objective"]),
            "hv": GaugeMetricFamily("paceline_hypervolume", "latest hypervolume", labels=cur),
            "p": GaugeMetricFamily("paceline_distribution_probability",
                                   "sampling probability", labels=dist),
            "adv": GaugeMetricFamily("paceline_distribution_mean_abs_advantage",
                                     "mean |advantage| over the health window", labels=dist),
            "acc": GaugeMetricFamily("paceline_distribution_success",
                                     "mean success over the health window", labels=dist),
            "zv": GaugeMetricFamily("paceline_distribution_zero_variance_fraction",
                                    "share of zero-variance groups", labels=dist),
            "lp": GaugeMetricFamily("paceline_distribution_learning_progress",
                                    "|fast - slow| EMA of success", labels=dist),
            "health": GaugeMetricFamily("paceline_distribution_health",
                                        "1 when the health flag is raised",
                                        labels=["curriculum", "distribution", "flag"]),
        }
        n = self.max_distributions
        for name, cached in self.service.engines.engines():
            with cached.lock:
                if cached.stale:  # may hold a report whose commit failed: shown again
                    continue  # once reloaded from the log, at its next use
                seq = cached.seq
                point = cached.engine.progress()
                progress = cached.engine.learning_progress()
            families["seq"].add_metric([name], seq)
            families["scale"].add_metric([name], point.reward_scale)
            for objective, weight in zip(cached.spec.objective_names,
                                         point.reward_weights.tolist(), strict=True):
                families["weight"].add_metric([name, objective], weight)
            if not math.isnan(point.hypervolume):
                families["hv"].add_metric([name], point.hypervolume)
            columns = {key: values[:n].tolist() for key, values in (
                ("p", point.probabilities), ("lp", progress), ("acc", point.success),
                ("adv", point.mean_abs_advantage), ("zv", point.zero_variance),
                ("stalled", point.stalled), ("saturated", point.saturated),
                ("hopeless", point.hopeless))}
            for d, distribution in enumerate(cached.engine.layout.names[:n]):
                labels = [name, distribution]
                for key in ("p", "lp", "adv", "acc", "zv"):
                    value = columns[key][d]
                    if not math.isnan(value):  # no window mean before a report
                        families[key].add_metric(labels, value)
                for flag in ("stalled", "saturated", "hopeless"):
                    families["health"].add_metric([*labels, flag], float(columns[flag][d]))
        yield from families.values()
