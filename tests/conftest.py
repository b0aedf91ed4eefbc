"""Shared fixtures: the reference models, and skipping tests whose hardware is absent."""

from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and bool(
        shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists()
    )


def _has_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    return bool(shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists())


def _has_coral() -> bool:
    return bool(ctypes.util.find_library("edgetpu")) and (
        Path("/dev/apex_0").exists() or _usb_has("1a6e", "089a") or _usb_has("18d1", "9302")
    )


def _usb_has(vendor: str, product: str) -> bool:
    for device in Path("/sys/bus/usb/devices").glob("*"):
        try:
            ids = (device / "idVendor").read_text().strip(), (device / "idProduct").read_text()
        except OSError:
            continue
        if ids[0] == vendor and ids[1].strip() == product:
            return True
    return False


_HARDWARE = {
    "gpu": (_has_cuda, "needs an NVIDIA GPU with onnxruntime-gpu (CUDAExecutionProvider)"),
    "tensorrt": (_has_tensorrt, "needs TensorRT (pip install 'edgeloop[tensorrt]') and a GPU"),
    "coral": (_has_coral, "needs a Coral EdgeTPU (/dev/apex_0 or USB) and libedgetpu.so.1"),
    "jetson": (lambda: Path("/etc/nv_tegra_release").exists(), "needs a Jetson (L4T)"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    present: dict[str, bool] = {}
    for item in items:
        for marker, (probe, reason) in _HARDWARE.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in present:
                present[marker] = probe()
            if not present[marker]:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """All reference models, built once per recipe and cached (about a minute the first time).

    The build runs in a child process: TensorFlow stays out of the test process, and
    its import-time warnings do not meet pytest's warnings-as-errors.
    """
    code = "from cloud_hub.reference import reference_models; print(reference_models())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"building the reference models failed:\n{done.stderr[-5000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def heldout(reference_dir: Path) -> tuple[object, object]:
    import numpy as np

    data = np.load(reference_dir / "data" / "digits-heldout.npz")
    return data["x"], data["y"]
