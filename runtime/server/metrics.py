"""Prometheus metrics (GET /metrics), named as vLLM and SGLang name theirs.

Counters and gauges are read from the engine's own counters when scraped, so they cannot
drift from it; latency histograms are fed by the engine as tokens are produced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..engine.engine import Engine
from ..engine.outputs import GenerateOutput

PREFIX = "loomlm:"
# Bucket bounds in seconds: from a fast GPU's few milliseconds to a loaded CPU's seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from arrival to the first output token",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time between a request's consecutive decode steps",
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Time from arrival to finish",
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            PREFIX + "request_success",
            "Finished requests by finish reason (stop, length, abort)",
            ["finished_reason"],
            registry=self.registry,
        )
        engine.observe_timings(self)

    # TokenTimings, called from the engine thread
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def finished(self, out: GenerateOutput) -> None:
        self.e2e.observe(out.e2e_latency)
        self.requests.labels(out.finish_reason.type).inc()

    def render(self) -> bytes:
        """The exposition text; blocks for one engine step at most (run it off the loop)."""
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        if not self.engine.alive:
            return
        s = self.engine.stats()
        total = s["kv_slots_total"]
        used = total - s["kv_slots_free"] - s["cached_tokens_evictable"]
        yield _gauge(
            "num_requests_running", "Requests being decoded or prefilled", s["num_running"]
        )
        yield _gauge("num_requests_waiting", "Requests waiting to be scheduled", s["num_waiting"])
        yield _gauge(
            "kv_cache_usage_perc",
            "Share of KV slots held by running requests and locked prefixes (0-1)",
            used / total,
        )
        yield _gauge(
            "kv_cache_cached_tokens", "Tokens kept in the prefix cache", s["cached_tokens"]
        )
        yield _gauge(
            "cache_hit_rate",
            "Share of admitted prompt tokens read from the prefix cache (0-1)",
            s["cache_hit_rate"],
        )
        yield _counter("prompt_tokens", "Prompt tokens computed", s["prompt_tokens"])
        yield _counter("generation_tokens", "Tokens sampled", s["generated_tokens"])
        yield _counter(
            "cache_hit_tokens", "Prompt tokens read from the cache", s["cache_hit_tokens"]
        )
        yield _counter("num_preemptions", "Requests preempted for lack of KV", s["num_preemptions"])
        yield _counter(
            "jump_forward_tokens",
            "Constrained tokens appended without sampling",
            s["jump_forward_tokens"],
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)
