"""The offload server's Prometheus metrics, in a registry of its own (not the global one).

Families (labels ``model`` and ``version``; ``model=""`` for refusals that came before a
model was resolved, so an unknown name cannot grow the label set)::

    edgeloop_offload_queue_seconds        histogram  time a request waited for its batch
    edgeloop_offload_batch_size           histogram  rows per batch the model ran
    edgeloop_offload_request_seconds      histogram  from request decoded to answer ready
    edgeloop_offload_rejections_total     counter    refused requests, by ``reason``
    edgeloop_offload_inferences_total     counter    requests answered with outputs
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "ModelMetrics", "OffloadMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ModelMetrics:
    """One model version's children of every family (label lookups done once)."""

    def __init__(self, metrics: OffloadMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self.queue = metrics.queue.labels(model, version)
        self.batch = metrics.batch.labels(model, version)
        self.request = metrics.request.labels(model, version)
        self.answered = metrics.inferences.labels(model, version)

    def reject(self, reason: str, count: int = 1) -> None:
        self._metrics.rejections.labels(*self._labels, reason).inc(count)


class OffloadMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "version")
        self.queue = Histogram(
            "edgeloop_offload_queue_seconds",
            "Time an offloaded request waited in its model's queue",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "edgeloop_offload_batch_size",
            "Rows in each batch the model ran",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.request = Histogram(
            "edgeloop_offload_request_seconds",
            "Time from a decoded request to its answer (queue, batch, split)",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "edgeloop_offload_rejections",
            "Offloaded requests refused, by reason",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.inferences = Counter(
            "edgeloop_offload_inferences",
            "Offloaded requests answered with outputs",
            labels,
            registry=self.registry,
        )
        self._models: dict[tuple[str, str], ModelMetrics] = {}

    def model(self, model: str, version: str) -> ModelMetrics:
        key = (model, version)
        found = self._models.get(key)
        if found is None:
            found = self._models.setdefault(key, ModelMetrics(self, model, version))
        return found

    def reject(self, reason: str, model: str = "", version: str = "") -> None:
        self.rejections.labels(model, version, reason).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every family."""
        return generate_latest(self.registry)
