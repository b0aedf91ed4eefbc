"""What inference runtimes this device has: imports, providers, delegates, GPUs.

Probing touches the system (imports vendor SDKs, looks for shared libraries);
the decision made from its answer lives in :mod:`edge_agent.selection`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import BackendUnavailable


@dataclass(frozen=True)
class RuntimeInfo:
    """One runtime as found here."""

    name: str
    available: bool
    reason: str = ""  # why not available
    version: str = ""
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers
    delegates: tuple[str, ...] = ()  # LiteRT delegates whose libraries are present


def probe_runtimes(names: Iterable[str] | None = None) -> dict[str, RuntimeInfo]:
    """Probe the named runtimes (default: every runtime edgeloop knows).

    Probing imports the runtime, which costs memory for the life of the process, so a
    daemon probes only the runtimes that can load its model's format.
    """
    wanted = _PROBES if names is None else [n for n in _PROBES if n in set(names)]
    return {name: _PROBES[name]() for name in wanted}


def _probe_onnxruntime() -> RuntimeInfo:
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        return RuntimeInfo("onnxruntime", False, f"onnxruntime is not importable ({exc})")
    return RuntimeInfo(
        "onnxruntime",
        True,
        version=str(ort.__version__),
        providers=tuple(ort.get_available_providers()),
    )


def _probe_litert() -> RuntimeInfo:
    from .backends.litert import DELEGATE_LIBRARIES, delegate_present, interpreter_module

    try:
        module = interpreter_module()
    except BackendUnavailable:
        return RuntimeInfo(
            "litert",
            False,
            "neither ai_edge_litert nor tflite_runtime is installed "
            "(pip install 'edgeloop[tflite]')",
        )
    package = module.__name__.split(".")[0]
    version = str(getattr(importlib.import_module(package), "__version__", ""))
    delegates = tuple(d for d in ("xnnpack", *DELEGATE_LIBRARIES) if delegate_present(d))
    return RuntimeInfo("litert", True, version=f"{package} {version}".strip(), delegates=delegates)


def _probe_tensorrt() -> RuntimeInfo:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return RuntimeInfo(
            "tensorrt", False, "tensorrt is not installed (pip install 'edgeloop[tensorrt]')"
        )
    version = str(getattr(trt, "__version__", ""))
    from .backends.tensorrt_native import gpu_name

    try:
        gpu = gpu_name()
    except BackendUnavailable as exc:
        return RuntimeInfo("tensorrt", False, str(exc), version=version)
    except Exception as exc:  # a broken driver install reports in many ways
        return RuntimeInfo("tensorrt", False, f"no usable CUDA device ({exc})", version=version)
    return RuntimeInfo("tensorrt", True, version=f"{version} on {gpu}")


_PROBES: dict[str, Callable[[], RuntimeInfo]] = {
    "onnxruntime": _probe_onnxruntime,
    "litert": _probe_litert,
    "tensorrt": _probe_tensorrt,
}
