"""The main job on embedded defaults: ``scripts/demo`` runs this.

Builds the reference models (cached between runs) and runs one inference on each
backend that works here, printing what ran where and how fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent import Engine
from edge_agent.errors import EdgeAgentError
from edge_agent.probe import probe_runtimes

from .reference import build_reference

# The model each backend runs in the demo.
_DEMO_MODELS = {
    "onnxruntime": "digits-edge/digits-edge-int8.onnx",
    "litert": "digits-edge/digits-edge-int8.tflite",
    "tensorrt": "digits-edge/digits-edge-fp32.onnx",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Build the reference models and run one inference on each backend here.",
    )
    parser.add_argument(
        "--out", default="artifacts/reference", help="where the models go (default %(default)s)"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.rebuild or not (out / "manifest.json").exists():
        print(f"building the reference models into {out} (about a minute)...", flush=True)
        report = build_reference(out)
        print(report.table(), flush=True)
    else:
        print(f"using the reference models in {out} (--rebuild to build them again)")
    sample = np.load(out / "data" / "digits-heldout.npz")
    image, label = sample["x"][:1], int(sample["y"][0])
    print(f"\none held-out digit (true label {label}) on each backend:")
    failures = 0
    for name, info in probe_runtimes().items():
        if not info.available:
            print(f"  {name:<12} not here: {info.reason}")
            continue
        failures += _infer(name, out / _DEMO_MODELS[name], image)
    return 1 if failures else 0


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
        f"(confidence {result.confidence:.3f}) in {elapsed_ms:.2f} ms on {where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
