"""The model pool: every ONNX model version in the registry, loaded when first asked for.

A model name maps to its versions in the order they were registered; a request without a
version gets the newest. A version registered in several ONNX formats is served in the
most precise one (``onnx-fp32`` before ``onnx-fp16`` before ``onnx-int8``): the cloud is
where the big, exact answer is. The registry's list is read again every
:data:`REFRESH_S` seconds (so a new newest version takes over within that time), and at
once when a request names a model or version not in it, so a newly registered one is
served without a restart. Concurrent misses share one read (callers are authenticated
before they can name a model, so misses cannot be used to flood the database).

A loaded version is a runner plus its :class:`DynamicBatcher`. At most ``max_loaded``
versions stay loaded; loading one more unloads the least recently used (its queued
requests are answered :class:`ModelUnloaded`, which the service retries once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.tensors import TensorSpec

from ..errors import NotFound
from ..registry import ModelVersion, Registry
from .batcher import DynamicBatcher
from .metrics import ModelMetrics, OffloadMetrics
from .runtime import Runner

__all__ = ["BatchSettings", "LoadedModel", "ModelPool", "RunnerFactory"]

_LOG = logging.getLogger(__name__)

REFRESH_S = 10.0
PLATFORM = "onnxruntime_onnx"
_FORMAT_RANK = {"onnx-fp32": 0, "onnx-fp16": 1, "onnx-int8": 2}

#: Loads one registered version from its artifact file.
RunnerFactory = Callable[[Path, ModelVersion], Runner]


@dataclass(frozen=True)
class BatchSettings:
    max_batch: int = 32
    max_delay_s: float = 0.002
    queue_size: int = 256


@dataclass(eq=False)
class LoadedModel:
    """One served model version: what requests are checked against and where they go."""

    name: str
    version: str
    format: str
    runner: Runner
    batcher: DynamicBatcher
    metrics: ModelMetrics
    specs: dict[str, TensorSpec] = field(init=False)
    output_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.specs = {spec.name: spec for spec in self.runner.inputs}
        self.output_names = tuple(spec.name for spec in self.runner.outputs)

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [spec.describe() for spec in self.runner.inputs],
            "outputs": [spec.describe() for spec in self.runner.outputs],
        }


def is_servable(format: str) -> bool:
    return format.startswith("onnx")


class ModelPool:
    """Resolves (name, version) to a :class:`LoadedModel`, loading it on first use."""

    def __init__(
        self,
        registry: Registry,
        runner_factory: RunnerFactory,
        metrics: OffloadMetrics,
        batch: BatchSettings,
        *,
        max_loaded: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.runner_factory = runner_factory
        self.metrics = metrics
        self.batch = batch
        self.max_loaded = max_loaded
        self._clock = clock
        self._lock = threading.Lock()  # the listing and the loaded map
        self._loading = threading.Lock()  # one load at a time: loads are rare and heavy
        self._refreshing = threading.Lock()  # one registry read at a time
        self._listing: dict[str, dict[str, ModelVersion]] = {}
        self._listed_at = -float("inf")
        self._loaded: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._closed = False

    # -- the registry's list ---------------------------------------------------------------

    def refresh(self) -> None:
        """Read the registry's ONNX versions again."""
        started = self._clock()
        listing: dict[str, dict[str, ModelVersion]] = {}
        for found in self.registry.list_models():  # by name, then registration time
            if not is_servable(found.format):
                continue
            versions = listing.setdefault(found.model, {})
            held = versions.get(found.version)  # replacing keeps the first one's place
            if held is None or _rank(found.format) < _rank(held.format):
                versions[found.version] = found
        with self._lock:
            self._listing = listing
            self._listed_at = started  # what was registered before this read is in it

    def names(self) -> list[str]:
        return sorted(self._listing)

    def versions(self, name: str) -> list[str]:
        """The versions of ``name``, oldest first; NotFound if it has none served."""
        return list(self._versions_of(name))

    def describe(self, name: str, version: str | None) -> ModelVersion:
        """The registry's record of what (name, version) serves; NotFound otherwise."""
        asked = self._clock()
        versions = self._versions_of(name, asked)
        if version is None:
            return versions[next(reversed(versions))]
        found = versions.get(version)
        if found is None:
            self._refresh_since(asked)
            versions = self._listing.get(name, versions)
            found = versions.get(version)
        if found is None:
            raise NotFound(
                f"model {name!r} has no version {version!r} served here "
                f"(versions: {', '.join(versions)})"
            )
        return found

    def _versions_of(self, name: str, asked: float | None = None) -> dict[str, ModelVersion]:
        asked = self._clock() if asked is None else asked
        if asked - self._listed_at >= REFRESH_S:
            self._refresh_since(asked)
        versions = self._listing.get(name)
        if versions is None:
            self._refresh_since(asked)
            versions = self._listing.get(name)
        if not versions:
            raise NotFound(f"no ONNX model named {name!r} is registered on this hub")
        return versions

    def _refresh_since(self, asked: float) -> None:
        """Read the registry unless another thread did so after ``asked``."""
        with self._refreshing:
            if self._listed_at <= asked:
                self.refresh()

    # -- loaded versions -------------------------------------------------------------------

    def get(self, name: str, version: str | None) -> LoadedModel:
        """The loaded model for (name, version or newest); loads it on first use."""
        record = self.describe(name, version)
        key = (record.model, record.version)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None and loaded.format == record.format:
                self._loaded.move_to_end(key)
                return loaded
        with self._loading:
            with self._lock:
                loaded = self._loaded.get(key)
                if loaded is not None and loaded.format == record.format:
                    return loaded
            return self._load(record)

    def _load(self, record: ModelVersion) -> LoadedModel:
        path = self.registry.artifact_file(record.sha256)
        started = time.perf_counter()
        runner = self.runner_factory(path, record)
        batchable = all(spec.shape and spec.shape[0] < 0 for spec in runner.inputs)
        metrics = self.metrics.model(record.model, record.version)
        batch = self.batch if batchable else BatchSettings(1, 0.0, self.batch.queue_size)
        batcher = DynamicBatcher(
            runner,
            name=f"{record.model}:{record.version}",
            max_batch=batch.max_batch,
            max_delay_s=batch.max_delay_s,
            queue_size=batch.queue_size,
            metrics=metrics,
        )
        batcher.start()
        loaded = LoadedModel(record.model, record.version, record.format, runner, batcher, metrics)
        _LOG.info(
            "offload: loaded %s version %s (%s) on %s in %.0f ms%s",
            record.model,
            record.version,
            record.format,
            runner.accelerator,
            1000 * (time.perf_counter() - started),
            "" if batchable else "; not batched (dim 0 is fixed)",
        )
        with self._lock:
            if self._closed:
                evicted = [loaded]
            else:
                old = self._loaded.pop((record.model, record.version), None)
                self._loaded[(record.model, record.version)] = loaded
                evicted = [old] if old is not None else []
                while len(self._loaded) > self.max_loaded:
                    evicted.append(self._loaded.popitem(last=False)[1])
        for model in evicted:
            _unload(model)
        if self._closed:
            raise NotFound(f"model {record.model!r}: the server is stopping")
        return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def close(self) -> None:
        """Unload everything: queued requests are refused, batches in hand finish."""
        with self._lock:
            self._closed = True
            models = list(self._loaded.values())
            self._loaded.clear()
        for model in models:
            _unload(model)


def _unload(model: LoadedModel) -> None:
    _LOG.info("offload: unloading %s version %s", model.name, model.version)
    model.batcher.stop()
    try:
        model.runner.close()
    except Exception:
        _LOG.exception("offload: closing %s version %s failed", model.name, model.version)


def _rank(format: str) -> int:
    return _FORMAT_RANK.get(format, len(_FORMAT_RANK))
