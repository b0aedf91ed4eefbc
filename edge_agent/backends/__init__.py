"""Inference backends, one module each, behind :class:`~.base.Backend`.

Vendor SDKs are imported only when a backend is asked for by name, so
importing this package costs nothing on a device that lacks them.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable
from ..formats import ModelFormat
from .base import Backend, BackendOptions

#: Which formats each backend loads; the TensorRT backend builds engines from ONNX.
BACKEND_FORMATS: dict[str, tuple[ModelFormat, ...]] = {
    "onnxruntime": (ModelFormat.ONNX,),
    "litert": (ModelFormat.TFLITE,),
    "tensorrt": (ModelFormat.TENSORRT_ENGINE, ModelFormat.ONNX),
}

_CLASSES = {
    "onnxruntime": ("edge_agent.backends.onnx_runtime", "OnnxRuntimeBackend"),
    "litert": ("edge_agent.backends.litert", "LiteRTBackend"),
    "tensorrt": ("edge_agent.backends.tensorrt_native", "TensorRTBackend"),
}


def backend_class(name: str) -> type[Backend]:
    """The backend class for ``name``, importing its vendor SDK now."""
    try:
        module_name, class_name = _CLASSES[name]
    except KeyError:
        raise BackendUnavailable(
            f"unknown backend {name!r} (expected one of {', '.join(_CLASSES)})"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"{name}: cannot import its runtime ({exc})") from exc
    cls: type[Backend] = getattr(module, class_name)
    return cls


__all__ = ["BACKEND_FORMATS", "Backend", "BackendOptions", "backend_class"]
