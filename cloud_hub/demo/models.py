"""Step 1: the reference models (built once, kept in ``--out``) and one inference per backend."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_agent import Engine
from edge_agent.errors import EdgeAgentError
from edge_agent.probe import probe_runtimes

from ..reference import build_reference

# The model each backend runs in step 1; step 2's agent runs the onnxruntime one.
DEMO_MODELS = {
    "onnxruntime": "digits-edge/digits-edge-int8.onnx",
    "litert": "digits-edge/digits-edge-int8.tflite",
    "tensorrt": "digits-edge/digits-edge-fp32.onnx",
}
HELDOUT = "data/digits-heldout.npz"
# Step 2's cloud model (registered on the hub, answers what the agent offloads) and the
# labelled split `edge-agent calibrate` picks the agent's threshold on.
CLOUD_NAME = "digits-cloud"
CLOUD_MODEL = "digits-cloud/digits-cloud-fp32.onnx"
VALIDATION = "data/digits-validation.npz"
TARGET_OFFLOAD = 0.2


def prepare_reference(out: Path, *, rebuild: bool) -> None:
    """Build the reference models into ``out`` unless they are there (or ``rebuild``)."""
    if rebuild or not (out / "manifest.json").exists():
        print(f"building the reference models into {out} (about a minute)...", flush=True)
        report = build_reference(out)
        print(report.table(), flush=True)
    else:
        print(f"using the reference models in {out} (--rebuild to build them again)")


def heldout_digits(out: Path, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` held-out digits (all when None): images (n, 8, 8, 1), labels (n,)."""
    data = np.load(out / HELDOUT)
    return data["x"][:count], data["y"][:count]


def infer_on_each_backend(out: Path) -> int:
    """One held-out digit on every backend here, one line each; how many failed."""
    images, labels = heldout_digits(out, 1)
    print(f"\none held-out digit (true label {int(labels[0])}) on each backend:")
    failures = 0
    for name, info in probe_runtimes().items():
        if not info.available:
            print(f"  {name:<12} not here: {info.reason}")
            continue
        failures += _infer(name, out / DEMO_MODELS[name], images)
    return failures


def _infer(backend: str, model: Path, image: np.ndarray) -> int:
    try:
        with Engine.load(model, backend=backend) as engine:
            started = time.perf_counter()
            (result,) = engine.classify(image)
            elapsed_ms = (time.perf_counter() - started) * 1000
            where = ", ".join(engine.backend.accelerators)
    except EdgeAgentError as exc:
        print(f"  {backend:<12} FAILED: {exc}")
        return 1
    print(
        f"  {backend:<12} {model.name:<26} -> {result.labels[0]} "
        f"(confidence {result.confidence:.3f}) in {elapsed_ms:.2f} ms on {where}",
        flush=True,
    )
    return 0
