"""Prometheus metrics on a registry of torpor's own (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from torpor.metering.meter import RequestUsage

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# (deployment, waiting, inflight) and (deployment, worker state, count), read at scrape time.
QueueSource = Callable[[], Iterable[tuple[str, int, int]]]
WorkerSource = Callable[[], Iterable[tuple[str, str, int]]]


class _LiveGauges(Collector):
    def __init__(self, queues: QueueSource, workers: WorkerSource):
        self._queues, self._workers = queues, workers

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "torpor_queue_depth", "Requests waiting for a worker slot", labels=["deployment"]
        )
        inflight = GaugeMetricFamily(
            "torpor_inflight_requests", "Requests holding a worker slot", labels=["deployment"]
        )
        for dep, waiting, running in self._queues():
            depth.add_metric([dep], waiting)
            inflight.add_metric([dep], running)
        workers = GaugeMetricFamily(
            "torpor_workers", "Workers by state", labels=["deployment", "state"]
        )
        for dep, state, count in self._workers():
            workers.add_metric([dep, state], count)
        yield depth
        yield inflight
        yield workers


@dataclass(frozen=True)
class _Children:
    prompt: Any
    completion: Any
    latency: Any
    queue_wait: Any
    ttft: Any
    cold_starts: Any
    cost: Any


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "torpor_requests", "Requests through the gateway", ["deployment", "status"], registry=r
        )
        self.tokens = Counter(
            "torpor_tokens", "Tokens processed", ["deployment", "kind"], registry=r
        )
        self.latency = Histogram(
            "torpor_request_latency_seconds", "Total request latency", ["deployment"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "torpor_time_to_first_token_seconds", "Time to first token", ["deployment"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "torpor_queue_wait_seconds", "Time waiting for a worker slot", ["deployment"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.cold_start_requests = Counter(
            "torpor_cold_start_requests", "Requests that waited on a cold start", ["deployment"],
            registry=r,
        )  # fmt: skip
        self.cold_starts = Histogram(
            "torpor_cold_start_seconds", "Worker start to ready", ["deployment"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.cost = Counter("torpor_cost_usd", "Cost in USD", ["deployment", "kind"], registry=r)
        self.storage_gb = Gauge(
            "torpor_storage_gb", "Storage held by a deployment", ["deployment"], registry=r
        )

        # Label lookups take a lock each; the request path reuses the children instead.
        self._per_deployment: dict[str, _Children] = {}
        self._per_status: dict[tuple[str, int], Any] = {}

    def watch(self, queues: QueueSource, workers: WorkerSource) -> None:
        self.registry.register(_LiveGauges(queues, workers))

    def observe_request(self, u: RequestUsage) -> None:
        dep = u.deployment
        c = self._per_deployment.get(dep)
        if c is None:
            c = self._per_deployment[dep] = _Children(
                self.tokens.labels(dep, "prompt"),
                self.tokens.labels(dep, "completion"),
                self.latency.labels(dep),
                self.queue_wait.labels(dep),
                self.ttft.labels(dep),
                self.cold_start_requests.labels(dep),
                self.cost.labels(dep, "tokens"),
            )
        status = self._per_status.get((dep, u.status))
        if status is None:
            status = self._per_status[(dep, u.status)] = self.requests.labels(dep, str(u.status))
        status.inc()
        c.prompt.inc(u.prompt_tokens)
        c.completion.inc(u.completion_tokens)
        c.latency.observe(u.latency_ms / 1000)
        c.queue_wait.observe(u.queue_ms / 1000)
        if u.ttft_ms is not None:
            c.ttft.observe(u.ttft_ms / 1000)
        if u.cold_start:
            c.cold_starts.inc()
        c.cost.inc(u.cost_nusd / 1e9)

    def observe_cold_start(self, deployment: str, seconds: float) -> None:
        self.cold_starts.labels(deployment).observe(seconds)

    def observe_worker_cost(self, deployment: str, cost: float) -> None:
        self.cost.labels(deployment, "gpu").inc(cost)

    def observe_storage(self, deployment: str, gb: float, cost: float) -> None:
        self.cost.labels(deployment, "storage").inc(cost)
        self.storage_gb.labels(deployment).set(gb)

    def render(self) -> bytes:
        return generate_latest(self.registry)
