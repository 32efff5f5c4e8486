"""Prometheus metrics of one server, in a registry of its own (two apps in one process never collide).

Counters and histograms are updated where things happen (the HTTP middleware, the model worker);
the hot cache, cache pool and queue are read when Prometheus scrapes, so they cost nothing between.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Live:
    """Reads the runtime's hot cache and pool and the scheduler's queue at scrape time."""

    def __init__(self, runtime: Any, queue_depth: Callable[[], int], active: Callable[[], int]):
        self.runtime = runtime
        self.queue_depth = queue_depth
        self.active = active

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        hot = self.runtime.hot
        yield CounterMetricFamily("skillforge_hot_cache_hits", "Artifact loads served from memory", value=hot.hits)
        yield CounterMetricFamily("skillforge_hot_cache_misses", "Artifact loads that read the store", value=hot.misses)
        yield GaugeMetricFamily("skillforge_hot_cache_bytes", "Bytes of artifacts held in memory", value=hot.bytes)
        pool = sum(c.nbytes for c in list(self.runtime.pool.caches))
        yield GaugeMetricFamily("skillforge_cache_pool_bytes", "Bytes of released caches kept for reuse", value=pool)
        yield GaugeMetricFamily("skillforge_queue_depth", "Requests waiting for the model", value=self.queue_depth())
        yield GaugeMetricFamily("skillforge_active_requests", "Requests holding a cache (being decoded)", value=self.active())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("skillforge_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("skillforge_request_seconds", "End-to-end latency of chat completions, last byte sent",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("skillforge_time_to_first_token_seconds", "From the request's arrival to its first token",
                              ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("skillforge_prompt_tokens", "Prompt tokens, reused from artifacts or computed",
                                     ["source"], registry=r)
        self.completion_tokens = Counter("skillforge_completion_tokens", "Generated tokens", registry=r)
        self.cancelled = Counter("skillforge_requests_cancelled", "Requests whose client went away before the end", registry=r)
        self.variants = Counter("skillforge_variants_compiled", "Skills compiled behind the tokens requests put before them (--learn-after)",
                                registry=r)

    def watch(self, runtime: Any, queue_depth: Callable[[], int], active: Callable[[], int]) -> None:
        self.registry.register(_Live(runtime, queue_depth, active))

    def render(self) -> bytes:
        return generate_latest(self.registry)
