"""Native TensorRT backend: serialized engines, and engines built from ONNX here.

An ``.engine``/``.plan`` file is tied to the GPU and TensorRT version that built
it, so for an ONNX model the backend builds the engine on the device itself and
caches it under a key of GPU name + TensorRT version + model hash. Device memory
is managed with CUDA's runtime API through ``cuda-python``.

Not exercised on a machine without an NVIDIA GPU: the tests marked ``tensorrt``
skip there.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from typing import Any

import numpy as np

from ..errors import BackendError, BackendUnavailable, ModelLoadError
from ..formats import ModelFormat, detect_format
from ..tensors import TensorSpec
from .base import Backend

# The largest batch an engine built from ONNX accepts for a dynamic batch dimension.
MAX_BUILD_BATCH = 32
WORKSPACE_BYTES = 1 << 30


def cudart() -> Any:
    """CUDA's runtime bindings from cuda-python (new and old module layouts)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailable(
        "tensorrt: cuda-python is not installed (pip install edgeloop[tensorrt])"
    )


def _check(result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"tensorrt: CUDA call failed with {err}")
    return values[0] if len(values) == 1 else values


def gpu_name() -> str:
    rt = cudart()
    if _check(rt.cudaGetDeviceCount()) < 1:
        raise BackendUnavailable("tensorrt: no CUDA device is visible")
    props = _check(rt.cudaGetDeviceProperties(0))
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")


def engine_cache_key(gpu: str, trt_version: str, model_sha256: str) -> str:
    """The file name under which an engine built from one ONNX model is cached."""
    safe_gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    return f"{safe_gpu}_trt{trt_version}_{model_sha256[:16]}.engine"


class TensorRTBackend(Backend):
    name = "tensorrt"
    formats = (ModelFormat.TENSORRT_ENGINE, ModelFormat.ONNX)

    def _load(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        try:
            self._trt = importlib.import_module("tensorrt")
        except ImportError as exc:
            raise BackendUnavailable("tensorrt: the tensorrt package is not installed") from exc
        self._rt = cudart()
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        plan = self._plan_bytes()
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelLoadError(f"{self.path}: TensorRT could not deserialize this engine")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self._rt.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.accelerators = ("tensorrt", "cuda")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = tuple(self._spec(n) for n in names if self._is_input(n))
        outputs = tuple(self._spec(n) for n in names if not self._is_input(n))
        return inputs, outputs

    # -- engines ------------------------------------------------------------------------

    def _plan_bytes(self) -> bytes:
        if detect_format(self.path) is ModelFormat.TENSORRT_ENGINE:
            return self.path.read_bytes()
        onnx_bytes = self.path.read_bytes()
        cache_dir = self.options.cache_dir or self.path.parent / ".trt-cache"
        key = engine_cache_key(
            gpu_name(), self._trt.__version__, hashlib.sha256(onnx_bytes).hexdigest()
        )
        cached = cache_dir / key
        if cached.exists():
            return cached.read_bytes()
        plan = self._build(onnx_bytes)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(plan)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, cached)
        return plan

    def _build(self, onnx_bytes: bytes) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadError(f"{self.path}: TensorRT cannot parse this ONNX model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if b"QuantizeLinear" in onnx_bytes:
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization from QDQ nodes
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            if any(dim < 0 for dim in shape):
                low = tuple(1 if dim < 0 else dim for dim in shape)
                high = tuple(MAX_BUILD_BATCH if dim < 0 else dim for dim in shape)
                profile.set_shape(tensor.name, low, low, high)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ModelLoadError(f"{self.path}: TensorRT failed to build an engine")
        return bytes(plan)

    # -- tensors ------------------------------------------------------------------------

    def _is_input(self, name: str) -> bool:
        return bool(self.engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT)

    def _spec(self, name: str) -> TensorSpec:
        dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
        shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
        return TensorSpec(name=name, shape=shape, dtype=dtype, stored_dtype=dtype)

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self._rt.cudaFree(pointer))
            pointer = _check(self._rt.cudaMalloc(nbytes))
            self._buffers[name] = (pointer, nbytes)
            self.context.set_tensor_address(name, pointer)
        return pointer

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = self._rt
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self._inputs:
            value = np.ascontiguousarray(feeds[spec.name])
            self.context.set_input_shape(spec.name, value.shape)
            pointer = self._buffer(spec.name, value.nbytes)
            _check(rt.cudaMemcpyAsync(pointer, value.ctypes.data, value.nbytes, h2d, self.stream))
        results: dict[str, np.ndarray] = {}
        for spec in self._outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            results[spec.name] = np.empty(shape, dtype=spec.dtype)
            self._buffer(spec.name, results[spec.name].nbytes)
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("tensorrt: execution failed")
        for name, host in results.items():
            pointer = self._buffers[name][0]
            _check(rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, d2h, self.stream))
        _check(rt.cudaStreamSynchronize(self.stream))
        return results

    def _close(self) -> None:
        for pointer, _ in self._buffers.values():
            self._rt.cudaFree(pointer)
        self._buffers.clear()
        self._rt.cudaStreamDestroy(self.stream)
        del self.context, self.engine
