"""Prometheus view of the replica coordinator (app/coordination.py): whether Redis is
reachable, how often the service fell back to the database alone, and what the write
leases and background catch-ups did. Read at scrape time from the coordinator's
counters, so the app layer stays free of Prometheus."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from paceline_server.app.coordination import Coordinator


class CoordinationCollector(Collector):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        stats = self.coordinator.stats()
        up = GaugeMetricFamily(
            "paceline_redis_up", "1 when Redis is configured and answered the last call",
            labels=["backend"])
        up.add_metric([stats.backend], float(stats.redis_up))
        yield up
        fallbacks = CounterMetricFamily(
            "paceline_redis_fallbacks",
            "Redis operations answered by the database alone (reason: error = the call "
            "failed, down = not tried, Redis failed moments ago)",
            labels=["operation", "reason"])
        for (operation, reason), count in sorted(stats.fallbacks.items()):
            fallbacks.add_metric([operation, reason], count)
        yield fallbacks
        leases = CounterMetricFamily(
            "paceline_write_leases", "cross-replica write lease requests by outcome",
            labels=["outcome"])
        for outcome, count in sorted(stats.leases.items()):
            leases.add_metric([outcome], count)
        yield leases
        yield CounterMetricFamily(
            "paceline_write_leases_lost",
            "leases found expired and taken over at renewal or release (the row lock "
            "fenced the late writer)", value=stats.leases_lost)
        yield CounterMetricFamily(
            "paceline_idempotency_cache_hits",
            "retried reports answered from the Redis ack cache", value=stats.idempotency_hits)
        yield CounterMetricFamily(
            "paceline_background_catch_ups",
            "announced heads folded into cached engines off the request path",
            value=stats.catch_ups)
        yield CounterMetricFamily(
            "paceline_background_caught_up_events",
            "events folded by background catch-ups", value=stats.caught_up_events)
