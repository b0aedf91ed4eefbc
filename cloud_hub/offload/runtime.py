"""What runs a model: the :class:`Runner` seam, and ONNX Runtime behind it.

The batcher only needs ``inputs``, ``outputs``, ``run`` and ``close``; tests put a tiny
fake behind the same protocol. :func:`choose_providers` is a pure function of the
providers ONNX Runtime has here and the ``device`` setting: CUDA first when present
(``auto``), the CPU otherwise. The session's own provider list is logged at load, so the
log says which one really serves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent.backends.onnx_runtime import ORT_TYPES
from edge_agent.tensors import TensorSpec

from ..errors import HubConfigError, Unavailable

__all__ = ["DEVICES", "OrtRunner", "Runner", "choose_providers"]

_LOG = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Values of the ``offload_device`` setting.
DEVICES = ("auto", "cpu", "cuda")


class Runner(Protocol):
    """One loaded model version; ``run`` is called from one thread at a time."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def accelerator(self) -> str: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def choose_providers(available: Sequence[str], device: str) -> list[str]:
    """The execution providers to ask for, best first; HubConfigError if none fits."""
    if device not in DEVICES:
        raise HubConfigError(f"offload_device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cuda":
        if CUDA not in available:
            raise HubConfigError(
                f"offload_device is 'cuda' but onnxruntime has no {CUDA} here "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use 'auto'"
            )
        return [CUDA, CPU]
    if device == "auto" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


class OrtRunner:
    """An ONNX Runtime session on the providers :func:`choose_providers` picked."""

    def __init__(self, path: Path, providers: Sequence[str], *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # An idle model must not burn a core spinning: the hub serves other things too.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        wanted: list[str | tuple[str, dict[str, Any]]] = [
            (CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}) if p == CUDA else p for p in providers
        ]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as exc:  # ORT raises its own types for a bad or unloadable file
            raise Unavailable(f"cannot load {path.name} in onnxruntime: {exc}") from exc
        used = self._session.get_providers()
        self._accelerator = "cuda" if used and used[0] == CUDA else "cpu"
        self._inputs = tuple(_spec(arg) for arg in self._session.get_inputs())
        self._outputs = tuple(_spec(arg) for arg in self._session.get_outputs())
        self._names = [spec.name for spec in self._outputs]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def accelerator(self) -> str:
        return self._accelerator

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._names, dict(feeds))
        return dict(zip(self._names, values, strict=True))

    def close(self) -> None:
        del self._session


def _spec(arg: Any) -> TensorSpec:
    dtype = ORT_TYPES.get(arg.type)
    if dtype is None:
        raise Unavailable(f"tensor {arg.name!r} has type {arg.type}, which is not served")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=dtype, stored_dtype=dtype)
