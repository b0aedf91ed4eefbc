"""Backend selection is a pure function: tables of (profile, format, runtimes) -> chain."""

from __future__ import annotations

import pytest

from edge_agent.formats import ModelFormat
from edge_agent.probe import RuntimeInfo
from edge_agent.profiles import load_profile
from edge_agent.selection import choose_backend

CPU_ONLY = {
    "onnxruntime": RuntimeInfo("onnxruntime", True, providers=("CPUExecutionProvider",)),
    "litert": RuntimeInfo("litert", True, delegates=("xnnpack",)),
    "tensorrt": RuntimeInfo("tensorrt", False, "tensorrt is not installed"),
}
NO_LITERT = {**CPU_ONLY, "litert": RuntimeInfo("litert", False, "not installed")}
JETSON = {
    "onnxruntime": RuntimeInfo(
        "onnxruntime",
        True,
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    ),
    "litert": RuntimeInfo("litert", True, delegates=("xnnpack",)),
    "tensorrt": RuntimeInfo("tensorrt", True, version="10.3"),
}
JETSON_NO_TRT = {**JETSON, "tensorrt": RuntimeInfo("tensorrt", False, "no CUDA device")}
CORAL = {**CPU_ONLY, "litert": RuntimeInfo("litert", True, delegates=("xnnpack", "edgetpu"))}

CASES = [
    # profile, format, runtimes, expected backend, expected chain (backend: chosen?)
    ("x86-64-cpu", ModelFormat.ONNX, CPU_ONLY, "onnxruntime", None),
    ("x86-64-cpu", ModelFormat.TFLITE, CPU_ONLY, "litert", None),
    ("x86-64-cpu", ModelFormat.TFLITE, NO_LITERT, None, "litert: skipped (not installed)"),
    ("jetson-orin-nano", ModelFormat.ONNX, JETSON, "tensorrt", None),
    ("jetson-orin-nano", ModelFormat.ONNX, JETSON_NO_TRT, "onnxruntime", "no CUDA device"),
    ("jetson-orin-nano", ModelFormat.TENSORRT_ENGINE, JETSON, "tensorrt", None),
    ("jetson-orin-nano", ModelFormat.TENSORRT_ENGINE, JETSON_NO_TRT, None, "no CUDA device"),
    ("raspberry-pi-coral-usb", ModelFormat.TFLITE, CORAL, "litert", None),
    ("raspberry-pi-coral-usb", ModelFormat.TFLITE, CPU_ONLY, "litert", "not here: edgetpu"),
    ("raspberry-pi-4", ModelFormat.ONNX, CPU_ONLY, "onnxruntime", "does not load onnx models"),
]


@pytest.mark.parametrize(("profile", "fmt", "runtimes", "backend", "reason"), CASES)
def test_selection_table(
    profile: str,
    fmt: ModelFormat,
    runtimes: dict[str, RuntimeInfo],
    backend: str | None,
    reason: str | None,
) -> None:
    selection = choose_backend(load_profile(profile), fmt, runtimes)
    chosen = selection.choice.name if selection.choice else None
    assert chosen == backend, selection.explain()
    if reason is not None:
        assert reason in selection.explain()
    # Every step but the last was skipped; the last is chosen when anything was.
    assert all(not a.chosen for a in selection.chain[:-1])
    assert selection.chain[-1].chosen == (backend is not None)


def test_providers_and_delegates_are_narrowed_to_what_is_here() -> None:
    orin = load_profile("jetson-orin-nano")
    only_cpu = {**JETSON_NO_TRT, "onnxruntime": CPU_ONLY["onnxruntime"]}
    selection = choose_backend(orin, ModelFormat.ONNX, only_cpu)
    assert selection.choice is not None
    assert selection.choice.providers == ("CPUExecutionProvider",)
    assert "not here: TensorrtExecutionProvider, CUDAExecutionProvider" in selection.explain()

    coral = choose_backend(load_profile("raspberry-pi-coral-usb"), ModelFormat.TFLITE, CORAL)
    assert coral.choice is not None and coral.choice.delegates[0] == "edgetpu"


def test_forcing_a_backend_walks_only_that_one() -> None:
    selection = choose_backend(
        load_profile("x86-64-cpu"), ModelFormat.ONNX, CPU_ONLY, only="litert"
    )
    assert selection.choice is None
    assert [a.backend for a in selection.chain] == ["litert"]
    assert "does not load onnx models" in selection.explain()
