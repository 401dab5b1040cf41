"""Prometheus metrics: one registry per app, so two apps in one process do not collide.

Counters and histograms are updated where things happen (the HTTP middleware, the search
endpoint, the batcher's hook, the model registry); figures the engine already keeps (cache
hits, the model versions, the document count) are read live at scrape time by a collector.

>>> from twostage.server.metrics import Metrics
>>> m = Metrics()
>>> m.requests.labels(route="/search", method="POST", status="200").inc()
>>> b"twostage_http_requests_total" in m.render()
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from twostage.engine import SearchResponse

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a cached first-stage answer (~1 ms) to a reranker past its budget (~2 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Live(Collector):
    """Reads engine and registry state when Prometheus scrapes."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        s = self._state()
        if not s:
            return
        hits = CounterMetricFamily(
            "twostage_cache_hits",
            "Cache hits by cache (query vectors, reranker scores)",
            labels=["cache"],
        )
        misses = CounterMetricFamily(
            "twostage_cache_misses", "Cache misses by cache", labels=["cache"]
        )
        for name, st in s["caches"].items():
            hits.add_metric([name], st["hits"])
            misses.add_metric([name], st["misses"])
        yield hits
        yield misses
        info = GaugeMetricFamily(
            "twostage_model_info", "Models serving now (value 1)", labels=["kind", "version"]
        )
        for kind, version in s["models"].items():
            if version:
                info.add_metric([kind, version], 1)
        yield info
        yield GaugeMetricFamily(
            "twostage_documents", "Documents in the collection", value=s["documents"]
        )
        yield GaugeMetricFamily(
            "twostage_rerank_queue_pairs", "Pairs waiting on the reranker queue", value=s["queued"]
        )
        yield GaugeMetricFamily("twostage_ready", "1 when the service is ready", value=s["ready"])


class Metrics:
    """The service's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "twostage_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "twostage_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "twostage_search_stage_seconds",
            "Search time per stage (encode, ann, bm25, fetch, rerank, total)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.searches = Counter(
            "twostage_searches", "Searches answered, by whether reranked", ["reranked"], registry=r
        )
        self.degraded = Counter(
            "twostage_search_degraded",
            "Answers that fell back to first-stage order for some candidates",
            ["reason"],
            registry=r,
        )
        self.batch_pairs = Histogram(
            "twostage_rerank_batch_pairs",
            "Pairs per reranker run (cross-request batches)",
            buckets=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256),
            registry=r,
        )
        self.batch_requests = Histogram(
            "twostage_rerank_batch_requests",
            "Requests sharing one reranker run",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "twostage_rerank_batch_seconds",
            "Reranker run time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_updates = Counter(
            "twostage_model_updates", "Model updates by result", ["result"], registry=r
        )
        self.inflight = Gauge("twostage_http_inflight", "Requests being served", registry=r)
        self.shed = Counter(
            "twostage_shed",
            "Requests refused with 503 overloaded without running, by kind (search, write) "
            "and reason (queue_full: over the admission bound; deadline: the budget passed "
            "while it waited for a thread)",
            ["kind", "reason"],
            registry=r,
        )
        self.pending = Gauge(
            "twostage_pending",
            "Requests waiting for or holding a thread, by kind (search, write)",
            ["kind"],
            registry=r,
        )
        self.over_limit = Counter(
            "twostage_search_over_limit",
            "Searches without the token refused for asking more than the anonymous cap, by "
            "limit (depth, budget)",
            ["limit"],
            registry=r,
        )
        self.impressions = Counter(
            "twostage_experiment_impressions",
            "Interleaved answers served, by experiment",
            ["experiment"],
            registry=r,
        )
        self.feedback = Counter(
            "twostage_experiment_feedback",
            "Click feedback recorded, by experiment and outcome (control, candidate, tie)",
            ["experiment", "outcome"],
            registry=r,
        )
        self.feedback_rejected = Counter(
            "twostage_experiment_feedback_rejected",
            "Click feedback refused, by reason (the error code)",
            ["reason"],
            registry=r,
        )
        self._live: _Live | None = None

    def live(self, state: Callable[[], dict[str, Any]]) -> None:
        """Register the scrape-time collector (once)."""
        if self._live is None:
            self._live = _Live(state)
            self.registry.register(self._live)

    def observe_search(self, resp: SearchResponse) -> None:
        """Stage timings, reranked or not, and the degradation class of one answer."""
        t = resp.timings
        for stage in ("encode", "ann", "bm25", "fetch", "rerank", "total"):
            self.stage.labels(stage=stage).observe(getattr(t, stage) / 1000.0)
        self.searches.labels(reranked=str(resp.reranker_version is not None).lower()).inc()
        if resp.degraded:
            self.degraded.labels(reason=degraded_class(resp.degraded_reason)).inc()

    def observe_batch(self, pairs: int, requests: int, tokens: int, seconds: float) -> None:
        """The batcher's hook."""
        self.batch_pairs.observe(pairs)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        out: bytes = generate_latest(self.registry)
        return out


def degraded_class(reason: str | None) -> str:
    """A low-cardinality label for a degraded reason: budget, timeout, failed, non_finite."""
    r = (reason or "").lower()
    if r.startswith("budget"):
        return "budget"
    if r.startswith("timeout"):
        return "timeout"
    if "non-finite" in r:
        return "non_finite"
    return "failed"


__all__ = ["CONTENT_TYPE", "Metrics", "degraded_class"]
