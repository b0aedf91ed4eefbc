"""LiteRT (TensorFlow Lite) backend: XNNPACK on CPUs, EdgeTPU and GPU delegates.

Uses ``ai_edge_litert`` and falls back to ``tflite_runtime`` on devices that only
have the older wheel. Integer models are fed and read through their own
quantization parameters, so callers always see float arrays.
"""

from __future__ import annotations

import ctypes.util
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable
from ..formats import ModelFormat
from ..tensors import Quantization, TensorSpec
from .base import Backend

# Shared libraries that provide each delegate. XNNPACK is built into the interpreter.
DELEGATE_LIBRARIES = {
    "edgetpu": "libedgetpu.so.1",
    "gpu": "libtensorflowlite_gpu_delegate.so",
}


def interpreter_module() -> Any:
    """The interpreter module: ``ai_edge_litert`` first, then ``tflite_runtime``."""
    errors = []
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendUnavailable("litert: no interpreter importable (" + "; ".join(errors) + ")")


def delegate_present(delegate: str) -> bool:
    """Whether the delegate's library can be found here (not loaded)."""
    if delegate == "xnnpack":
        return True
    library = DELEGATE_LIBRARIES.get(delegate)
    if library is None:
        return False
    if ctypes.util.find_library(library.removeprefix("lib").split(".so")[0]):
        return True
    return any(
        Path(d, library).exists()
        for d in (
            "/usr/lib",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/local/lib",
        )
    )


class LiteRTBackend(Backend):
    name = "litert"
    formats = (ModelFormat.TFLITE,)

    def _load(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        module = interpreter_module()
        delegates, used = self._delegates(module.load_delegate)
        self.interpreter = module.Interpreter(
            model_path=str(self.path),
            num_threads=self.options.intra_op_threads,
            experimental_delegates=delegates or None,
        )
        self.interpreter.allocate_tensors()
        self.accelerators = (*used, "cpu")
        names = _signature_names(self.interpreter)
        self._in = [
            (names.get(d["index"], d["name"]), d) for d in self.interpreter.get_input_details()
        ]
        self._out = [
            (names.get(d["index"], d["name"]), d) for d in self.interpreter.get_output_details()
        ]
        self._batch = {name: int(d["shape"][0]) if len(d["shape"]) else 0 for name, d in self._in}
        return (
            tuple(_spec(name, d) for name, d in self._in),
            tuple(_spec(name, d) for name, d in self._out),
        )

    def _delegates(self, load_delegate: Callable[[str], Any]) -> tuple[list[Any], list[str]]:
        loaded: list[Any] = []
        used: list[str] = []
        for delegate in self.options.delegates:
            if delegate == "xnnpack":
                used.append("xnnpack")  # the interpreter applies it by default
                continue
            library = DELEGATE_LIBRARIES.get(delegate)
            if library is None or not delegate_present(delegate):
                continue
            try:
                loaded.append(load_delegate(library))
            except (OSError, ValueError, RuntimeError):
                continue  # present but unusable (no device plugged in): fall back
            used.append(delegate)
            break  # one hardware delegate per interpreter
        return loaded, used

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        interp = self.interpreter
        self._fit_batch(feeds)
        for name, detail in self._in:
            interp.set_tensor(detail["index"], feeds[name])
        interp.invoke()
        return {name: interp.get_tensor(detail["index"]) for name, detail in self._out}

    def _fit_batch(self, feeds: dict[str, np.ndarray]) -> None:
        """Resize the interpreter when the batch size changes (models say -1 for it)."""
        changed = False
        for name, detail in self._in:
            value = feeds[name]
            if value.ndim and value.shape[0] != self._batch[name]:
                self.interpreter.resize_tensor_input(detail["index"], list(value.shape))
                self._batch[name] = value.shape[0]
                changed = True
        if changed:
            self.interpreter.allocate_tensors()

    def _close(self) -> None:
        del self.interpreter


def _signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index -> the name the model's only signature gives it ({} if not one)."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    details = {**runner.get_input_details(), **runner.get_output_details()}
    return {int(detail["index"]): key for key, detail in details.items()}


def _spec(name: str, detail: dict[str, Any]) -> TensorSpec:
    stored = np.dtype(detail["dtype"])
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(int(dim) for dim in signature)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if stored.kind in "iu" and scale:
        quant = Quantization(scale=float(scale), zero_point=int(zero_point))
        return TensorSpec(name, shape, np.dtype(np.float32), stored, quant)
    return TensorSpec(name, shape, stored, stored)
