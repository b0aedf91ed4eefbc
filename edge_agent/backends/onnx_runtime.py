"""ONNX Runtime backend: CPU, CUDA and the TensorRT execution provider.

Threads come from the device profile and spinning is turned off, so an idle
session costs no CPU. The TensorRT execution provider keeps its engines and
timing caches under the cache directory, so a device compiles a model once; on the CPU
the cache directory keeps the optimized graph (:mod:`.ort_optimized`), so loading an
update beside the running model barely holds the GIL.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import BackendUnavailable
from ..formats import ModelFormat
from ..tensors import TensorSpec
from .base import Backend
from .ort_optimized import optimized_model

_LOG = logging.getLogger(__name__)

#: ONNX Runtime's type names -> numpy dtypes (the hub's offload runtime uses it too).
ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}


def available_providers() -> tuple[str, ...]:
    return tuple(ort.get_available_providers())


def session_options(intra_op: int, inter_op: int) -> ort.SessionOptions:
    """Session options for a device: fixed thread pools that never spin."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op
    opts.inter_op_num_threads = inter_op
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn a core waiting for work; on a device that core belongs to
    # the MQTT loop, the HTTP server and the application.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    formats = (ModelFormat.ONNX,)

    session: ort.InferenceSession

    def _load(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        opts = session_options(self.options.intra_op_threads, self.options.inter_op_threads)
        providers = self._providers()
        self.session = self._session(opts, providers)
        self.accelerators = tuple(self.session.get_providers())
        self._output_names = [out.name for out in self.session.get_outputs()]
        inputs = tuple(_spec(arg) for arg in self.session.get_inputs())
        outputs = tuple(_spec(arg) for arg in self.session.get_outputs())
        return inputs, outputs

    def _session(
        self, opts: ort.SessionOptions, providers: list[str | tuple[str, dict[str, Any]]]
    ) -> ort.InferenceSession:
        """A session on the graph optimized ahead of time when there is one (CPU only)."""
        cache = self.options.cache_dir
        if cache is not None and providers == ["CPUExecutionProvider"]:
            optimized = optimized_model(self.path, cache)
            if optimized is not None:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                try:
                    return ort.InferenceSession(
                        str(optimized), sess_options=opts, providers=providers
                    )
                except Exception as exc:  # a damaged cache file: drop it, load the original
                    _LOG.warning("%s: dropping its optimized graph (%s)", self.path, exc)
                    optimized.unlink(missing_ok=True)
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)

    def _providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        present = set(available_providers())
        wanted = [p for p in self.options.providers if p in present]
        if not wanted:
            raise BackendUnavailable(
                f"onnxruntime: none of the providers {list(self.options.providers)} is "
                f"available here (available: {sorted(present)})"
            )
        return [self._with_options(p) for p in wanted]

    def _with_options(self, provider: str) -> str | tuple[str, dict[str, Any]]:
        cache = self.options.cache_dir
        if provider == "TensorrtExecutionProvider" and cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            return (
                provider,
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache / "ort-trt-engines"),
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(cache / "ort-trt-timing"),
                    "trt_fp16_enable": True,
                },
            )
        if provider == "CUDAExecutionProvider":
            return (provider, {"cudnn_conv_algo_search": "HEURISTIC"})
        return provider

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values, strict=False))  # same length by contract

    def _close(self) -> None:
        del self.session


def _spec(arg: Any) -> TensorSpec:
    dtype = ORT_TYPES.get(arg.type)
    if dtype is None:
        raise BackendUnavailable(
            f"onnxruntime: tensor {arg.name!r} has unsupported type {arg.type}"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=dtype, stored_dtype=dtype)
