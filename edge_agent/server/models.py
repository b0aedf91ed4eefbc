"""The model service: the one core every transport calls (HTTP now, gRPC later).

It serves one named model, answers metadata and readiness, and runs inference on
decoded tensors. The engine sits behind a slot that :meth:`ModelService.swap` replaces
in one assignment: a request takes the slot at its start and keeps it to its end, so an
OTA update never fails a request in flight, and :meth:`ModelService.wait_released` says
when the old engine may be closed.

Backends that are not known to be safe for concurrent ``run`` calls (LiteRT's
interpreter is not; TensorRT contexts are not) are called under a per-engine lock.
ONNX Runtime sessions are, and run without one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from .. import __version__
from ..errors import EdgeAgentError, InputError
from ..formats import ModelFormat
from ..tensors import TensorSpec
from .codec import BINARY_EXTENSION, datatype_of
from .errors import ModelNotFound, ModelNotReady

__all__ = [
    "Cascade",
    "InferenceEngine",
    "ModelMetadata",
    "ModelService",
    "Recorder",
    "ServerMetadata",
]

_LOG = logging.getLogger(__name__)

SERVER_NAME = "edgeloop-agent"
_RELEASE_POLL_S = 0.005
#: Backends whose ``run`` may be called from several threads at once.
THREAD_SAFE_BACKENDS = frozenset({"onnxruntime"})
_PLATFORMS = {
    ModelFormat.ONNX: "onnxruntime_onnx",
    ModelFormat.TFLITE: "tensorflow_lite",
    ModelFormat.TENSORRT_ENGINE: "tensorrt_plan",
}


class InferenceEngine(Protocol):
    """What the service needs of an engine (:class:`edge_agent.engine.Engine` has it)."""

    model_format: ModelFormat

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def backend_name(self) -> str: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Recorder(Protocol):
    """Telemetry's hot path (:class:`edge_agent.telemetry.aggregate.Recorder` has it)."""

    def record(
        self,
        latency_s: float,
        ok: bool,
        probabilities: np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}


@dataclass(frozen=True)
class ModelMetadata:
    """A model's metadata; shapes use -1 for dimensions the model leaves open."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
        }


class Cascade(Protocol):
    """Who answers after the local model did (:class:`edge_agent.offload.cascade.Cascade`)."""

    def answer(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        probabilities_output: str,
        probabilities: np.ndarray | None,
        edge_version: str,
    ) -> tuple[dict[str, np.ndarray], str]: ...


class InferenceResult(NamedTuple):
    outputs: dict[str, np.ndarray]
    model_version: str
    output_names: tuple[str, ...]
    answered_by: str = "edge"  # "cloud" when the cascade's hub answered (some rows)


@dataclass(eq=False)
class _Slot:
    """One engine and what every request needs of it, computed once at swap time."""

    engine: InferenceEngine
    version: str
    metadata: ModelMetadata
    inputs: dict[str, TensorSpec]
    output_names: tuple[str, ...]
    lock: threading.Lock | None
    probabilities: str | None  # first output's name when it may hold class probabilities
    trust_probabilities: bool  # the model card says so: no per-request check
    users: int = field(default=0)


class ModelService:
    """Serves one model under ``name``; ``engine`` None means not loaded yet (not ready).

    Pass an engine that is loaded and warmed (:meth:`Engine.load` warms it up).
    ``recorder`` gets one ``record`` call per inference that reached the engine.
    ``cascade``, when set, sees every answer of a classifier after the engine released it
    and may replace it with the hub's (no slot is held during the remote call, so an OTA
    swap never waits on the hub).
    """

    def __init__(
        self,
        engine: InferenceEngine | None,
        name: str,
        version: str = "1",
        *,
        recorder: Recorder | None = None,
        cascade: Cascade | None = None,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"model name must be non-empty and without '/', got {name!r}")
        self.name = name
        self.recorder = recorder
        self.cascade = cascade
        self.server_metadata = ServerMetadata(SERVER_NAME, __version__, (BINARY_EXTENSION,))
        self._version = version
        self._counts = threading.Lock()  # guards every slot's ``users``
        self._retired: list[_Slot] = []  # swapped out, maybe still in use
        self._slot: _Slot | None = None if engine is None else _slot(engine, name, version)

    # -- state ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._slot is not None

    @property
    def version(self) -> str:
        slot = self._slot
        return slot.version if slot is not None else self._version

    @property
    def engine(self) -> InferenceEngine | None:
        slot = self._slot
        return slot.engine if slot is not None else None

    def swap(self, engine: InferenceEngine, version: str | None = None) -> InferenceEngine | None:
        """Serve ``engine`` from now on (as ``version`` when given); return the old engine.

        Requests already running finish on the old engine; close it only once
        :meth:`wait_released` says they have.
        """
        version = self.version if version is None else version
        new = _slot(engine, self.name, version)
        with self._counts:
            old, self._slot = self._slot, new
            self._version = version
            self._retired = [slot for slot in self._retired if slot.users]
            if old is not None:
                self._retired.append(old)
        _LOG.info("model %s: now serving version %s on %s", self.name, version, engine.backend_name)
        return old.engine if old is not None else None

    def wait_released(self, engine: InferenceEngine, timeout: float) -> bool:
        """Wait until no request is running on ``engine`` (one swapped out); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._counts:
                slots = [*self._retired, *([self._slot] if self._slot is not None else [])]
                if not any(slot.users for slot in slots if slot.engine is engine):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RELEASE_POLL_S)  # rare (after an OTA swap): polling keeps infer lean

    # -- the protocol's questions --------------------------------------------------------

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        return self._checked(name, version).metadata

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether ``name`` can run now; raises :class:`ModelNotFound` for another model."""
        try:
            self._checked(name, version)
        except ModelNotReady:
            return False
        return True

    def infer(
        self,
        name: str,
        version: str | None,
        feeds: Mapping[str, np.ndarray],
        outputs: Iterable[str] = (),
    ) -> InferenceResult:
        """Run the model on decoded ``feeds``; record the outcome to telemetry; then let
        the cascade (if any) have the hub answer what the model was unsure of.

        ``outputs`` names the outputs the caller will ask for: an unknown one is an
        :class:`InputError` before the model runs.
        """
        counts = self._counts
        with counts:  # taking the slot and counting its user is one step for wait_released
            slot = self._checked(name, version)
            slot.users += 1
        try:
            _check_request(slot, feeds, outputs)
            start = time.perf_counter()
            try:
                results = slot.engine.run(feeds) if slot.lock is None else _run_locked(slot, feeds)
            except EdgeAgentError:
                self._record(time.perf_counter() - start, False, None, feeds)
                raise
        finally:
            with counts:
                slot.users -= 1
        latency = time.perf_counter() - start
        cascade = self.cascade
        wanted = self.recorder is not None or cascade is not None
        probabilities = _probabilities(slot, results) if wanted else None
        self._record(latency, True, probabilities, feeds)
        if cascade is not None and slot.probabilities is not None:
            try:
                results, answered_by = cascade.answer(
                    feeds, results, slot.probabilities, probabilities, slot.version
                )
            except Exception:  # the local answer stands whatever the cascade does
                _LOG.exception("offload cascade failed; answering locally")
                answered_by = "edge"
            return InferenceResult(results, slot.version, slot.output_names, answered_by)
        return InferenceResult(results, slot.version, slot.output_names)

    # -- helpers -------------------------------------------------------------------------

    def _checked(self, name: str, version: str | None) -> _Slot:
        if name != self.name:
            raise ModelNotFound(f"unknown model {name!r} (this agent serves {self.name!r})")
        slot = self._slot
        current = slot.version if slot is not None else self._version
        if version is not None and version != current:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} (serving version {current!r})"
            )
        if slot is None:
            raise ModelNotReady(f"model {name!r} is not loaded yet")
        return slot

    def _record(
        self,
        latency: float,
        ok: bool,
        probabilities: np.ndarray | None,
        feeds: Mapping[str, np.ndarray],
    ) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        try:
            recorder.record(latency, ok, probabilities=probabilities, inputs=feeds)
        except Exception:  # telemetry must not fail an answered request
            _LOG.exception("telemetry recorder failed; the request was answered")


def _slot(engine: InferenceEngine, name: str, version: str) -> _Slot:
    metadata = ModelMetadata(
        name=name,
        versions=(version,),
        platform=_PLATFORMS.get(engine.model_format, str(engine.model_format)),
        inputs=engine.inputs,
        outputs=engine.outputs,
    )
    first = engine.outputs[0] if engine.outputs else None
    card = getattr(engine, "card", None)
    kind = getattr(card, "output_kind", None)
    classifier = (
        first is not None
        and first.dtype.kind == "f"
        and len(first.shape) == 2
        and kind in (None, "probabilities")
    )
    return _Slot(
        engine=engine,
        version=version,
        metadata=metadata,
        inputs={spec.name: spec for spec in engine.inputs},
        output_names=tuple(spec.name for spec in engine.outputs),
        lock=None if engine.backend_name in THREAD_SAFE_BACKENDS else threading.Lock(),
        probabilities=first.name if classifier and first is not None else None,
        trust_probabilities=kind == "probabilities",
    )


def _check_request(slot: _Slot, feeds: Mapping[str, np.ndarray], outputs: Iterable[str]) -> None:
    """Outputs must exist; inputs must have the model's exact datatype (the protocol says so).

    Input names and shapes are the engine's to check.
    """
    for output in outputs:
        if output not in slot.output_names:
            raise InputError(
                f"output {output!r}: the model has no such output "
                f"(it has {', '.join(map(repr, slot.output_names))})"
            )
    specs = slot.inputs
    for name, value in feeds.items():
        spec = specs.get(name)
        if spec is not None and value.dtype != spec.dtype:
            raise InputError(
                f"input {name!r}: datatype {datatype_of(value)} does not match the model's "
                f"{spec.datatype}"
            )


def _run_locked(slot: _Slot, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    assert slot.lock is not None
    with slot.lock:
        return slot.engine.run(feeds)


def _probabilities(slot: _Slot, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The first output when it holds class probabilities (rows of non-negatives summing to 1)."""
    if slot.probabilities is None:
        return None
    scores = outputs.get(slot.probabilities)
    if scores is None or scores.ndim != 2:
        return None
    if slot.trust_probabilities:
        return scores
    if scores.size and bool(np.all(scores >= 0)) and np.allclose(scores.sum(axis=1), 1, atol=0.02):
        return scores
    return None
