"""``cloud-hub models build-reference``: build every reference model, seeded.

Trains ``digits-edge`` and ``digits-cloud`` on scikit-learn's bundled digits,
builds ``mobilenetv2-speed`` with random weights, exports each to the formats
devices run, evaluates every artifact through the edge agent's own backends and
writes a model card beside it. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge_agent.backends import Backend, BackendOptions, backend_class
from edge_agent.formats import detect_format
from edge_agent.model_card import CARD_SUFFIX, ModelCard, TensorInfo, sha256_file

from ..errors import DependencyMissing, InvalidRequest
from . import architectures
from .data import LABELS, PREPROCESSING, Digits, load_digits_splits, with_shifts
from .exporting import (
    convert_tflite_fp32,
    convert_tflite_int8,
    export_onnx,
    quantize_onnx_int8,
    quiet,
)

MODEL_NAMES = ("digits-edge", "digits-cloud", "mobilenetv2-speed")
VERSION = "1.0.0"
# name -> (epochs, learning rate, batch size, train on shifted copies too)
_TRAINING = {
    "digits-edge": (30, 3e-3, 32, False),
    "digits-cloud": (15, 1e-3, 64, True),
}
_CALIBRATION_ROWS = 300
_MOBILENET_CALIBRATION_ROWS = 8


@dataclass
class BuiltArtifact:
    model: str
    format: str
    path: Path
    card: ModelCard


@dataclass
class BuildReport:
    out: Path
    seed: int
    artifacts: list[BuiltArtifact] = field(default_factory=list)

    def accuracy(self, model: str, fmt: str) -> float | None:
        for artifact in self.artifacts:
            if artifact.model == model and artifact.format == fmt:
                value = artifact.card.metrics.get("heldout_accuracy")
                return float(value) if value is not None else None
        raise KeyError((model, fmt))

    def table(self) -> str:
        rows = [("model", "format", "held-out acc", "size", "file")]
        for a in self.artifacts:
            acc = a.card.metrics.get("heldout_accuracy")
            rows.append(
                (
                    a.model,
                    a.format,
                    "-" if acc is None else f"{100 * acc:.2f}%",
                    _human_bytes(a.card.bytes),
                    str(a.path.relative_to(self.out)),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def build_reference(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    models: Sequence[str] = MODEL_NAMES,
    progress: TextIO | None = None,
) -> BuildReport:
    """Build the named reference models under ``out``; returns what was written."""
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise InvalidRequest(
            f"unknown reference model(s) {', '.join(unknown)} (expected {', '.join(MODEL_NAMES)})"
        )
    log = _Progress(progress if progress is not None else sys.stderr)
    keras, tf = _import_training_stack()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits_splits(seed)
    _write_data(root, digits)
    report = BuildReport(out=root, seed=seed)
    for index, name in enumerate(models, start=1):
        log.step(f"[{index}/{len(models)}] {name}")
        keras.utils.set_random_seed(seed)
        builder = _BUILDERS[name]
        report.artifacts.extend(builder(keras, tf, root / name, digits, seed, log))
    manifest = [
        {
            "model": a.model,
            "format": a.format,
            "file": str(a.path.relative_to(root)),
            "heldout_accuracy": a.card.metrics.get("heldout_accuracy"),
            "bytes": a.card.bytes,
        }
        for a in report.artifacts
    ]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return report


# -- the three models ---------------------------------------------------------------------


def _build_digits(
    name: str, make: Callable[[Any], Any], quantize: bool
) -> Callable[..., list[BuiltArtifact]]:
    def build(
        keras: Any, tf: Any, folder: Path, digits: Digits, seed: int, log: _Progress
    ) -> list[BuiltArtifact]:
        folder.mkdir(parents=True, exist_ok=True)
        model = make(keras)
        epochs, rate, batch, shifted = _TRAINING[name]
        model.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        train = with_shifts(digits.train) if shifted else digits.train
        model.fit(
            train.x,
            train.y,
            epochs=epochs,
            batch_size=batch,
            shuffle=True,
            verbose=0,
            callbacks=[log.keras_callback(keras, name, epochs)],
        )
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(digits.train.x), size=_CALIBRATION_ROWS, replace=False)
        calibration = digits.train.x[np.sort(rows)]
        info = _Info(name, seed, model, tf, keras, digits)
        artifacts = []
        fp32 = folder / f"{name}-fp32.onnx"
        log.step(f"      exporting {fp32.name}")
        export_onnx(model, fp32, "probabilities")
        recipe = {
            "exporter": "keras+tf2onnx",
            "epochs": epochs,
            "augmentation": "1-pixel shifts" if shifted else "none",
        }
        artifacts.append(info.finish(fp32, "onnx-fp32", recipe))
        if quantize:
            int8 = folder / f"{name}-int8.onnx"
            log.step(f"      quantizing {int8.name} (static QDQ, {len(calibration)} rows)")
            quantize_onnx_int8(fp32, int8, calibration, "image")
            artifacts.append(info.finish(int8, "onnx-int8", _calibration_note(calibration)))
            lite = folder / f"{name}-int8.tflite"
            log.step(f"      converting {lite.name} (full-integer int8)")
            convert_tflite_int8(model, lite, calibration, "probabilities")
            artifacts.append(info.finish(lite, "tflite-int8", _calibration_note(calibration)))
        return artifacts

    return build


def _build_mobilenet(
    keras: Any, tf: Any, folder: Path, digits: Digits, seed: int, log: _Progress
) -> list[BuiltArtifact]:
    name = "mobilenetv2-speed"
    folder.mkdir(parents=True, exist_ok=True)
    model = architectures.mobilenetv2_speed(keras)
    rng = np.random.default_rng(seed)
    calibration = rng.uniform(-1, 1, size=(_MOBILENET_CALIBRATION_ROWS, 224, 224, 3))
    calibration = calibration.astype(np.float32)
    info = _Info(name, seed, model, tf, keras, None)
    fp32 = folder / f"{name}-fp32.onnx"
    log.step(f"      exporting {fp32.name}")
    export_onnx(model, fp32, "probabilities")
    artifacts = [info.finish(fp32, "onnx-fp32", {"weights": "random (speed only)"})]
    int8 = folder / f"{name}-int8.onnx"
    log.step(f"      quantizing {int8.name}")
    quantize_onnx_int8(fp32, int8, calibration, "image")
    artifacts.append(info.finish(int8, "onnx-int8", {"weights": "random (speed only)"}))
    lite = folder / f"{name}-int8.tflite"
    log.step(f"      converting {lite.name}")
    convert_tflite_int8(model, lite, calibration, "probabilities")
    artifacts.append(info.finish(lite, "tflite-int8", {"weights": "random (speed only)"}))
    lite_fp32 = folder / f"{name}-fp32.tflite"
    log.step(f"      converting {lite_fp32.name} (for the int8 speed-up comparison)")
    convert_tflite_fp32(model, lite_fp32, "probabilities")
    artifacts.append(info.finish(lite_fp32, "tflite-fp32", {"weights": "random (speed only)"}))
    return artifacts


_BUILDERS: dict[str, Callable[..., list[BuiltArtifact]]] = {
    "digits-edge": _build_digits("digits-edge", architectures.digits_edge, quantize=True),
    "digits-cloud": _build_digits("digits-cloud", architectures.digits_cloud, quantize=False),
    "mobilenetv2-speed": _build_mobilenet,
}


# -- cards and evaluation -----------------------------------------------------------------


@dataclass
class _Info:
    name: str
    seed: int
    model: Any
    tf: Any
    keras: Any
    digits: Digits | None

    def finish(self, path: Path, fmt: str, extra: dict[str, Any]) -> BuiltArtifact:
        backend = _open(path)
        try:
            metrics = self._evaluate(backend) if self.digits is not None else {}
            inputs = [TensorInfo(s.name, s.datatype, list(s.shape)) for s in backend.inputs]
            outputs = [TensorInfo(s.name, s.datatype, list(s.shape)) for s in backend.outputs]
        finally:
            backend.close()
        card = ModelCard(
            name=self.name,
            version=VERSION,
            format=fmt,
            file=path.name,
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
            inputs=inputs,
            outputs=outputs,
            labels=LABELS if self.digits is not None else [],
            preprocessing=PREPROCESSING if self.digits is not None else _MOBILENET_PREPROCESSING,
            metrics=metrics,
            build={
                "tool": "cloud-hub models build-reference",
                "seed": self.seed,
                "tensorflow": self.tf.__version__,
                "keras": self.keras.__version__,
                "parameters": int(self.model.count_params()),
                "data": "sklearn.datasets.load_digits" if self.digits is not None else "none",
                **extra,
            },
        )
        path.with_name(path.name + CARD_SUFFIX).write_text(card.to_json())
        return BuiltArtifact(self.name, fmt, path, card)

    def _evaluate(self, backend: Backend) -> dict[str, Any]:
        assert self.digits is not None
        held = self.digits.heldout
        probabilities = backend.run({backend.inputs[0].name: held.x})[backend.outputs[0].name]
        predictions = probabilities.argmax(axis=1)
        return {
            "heldout_accuracy": round(float((predictions == held.y).mean()), 6),
            "heldout_samples": len(held.y),
        }


_MOBILENET_PREPROCESSING = {
    "description": "224x224 RGB scaled to [-1, 1], NHWC float32 (random weights: speed only)",
    "layout": "NHWC",
    "shape": [224, 224, 3],
}


def _open(path: Path) -> Backend:
    fmt = detect_format(path)
    name = "litert" if fmt.value == "tflite" else "onnxruntime"
    return backend_class(name)(path, BackendOptions(intra_op_threads=os.cpu_count() or 1))


def _calibration_note(calibration: np.ndarray) -> dict[str, Any]:
    return {"calibration": f"{len(calibration)} training images, seeded"}


def _write_data(root: Path, digits: Digits) -> None:
    data = root / "data"
    data.mkdir(exist_ok=True)
    np.savez(data / "digits-validation.npz", x=digits.validation.x, y=digits.validation.y)
    np.savez(data / "digits-heldout.npz", x=digits.heldout.x, y=digits.heldout.y)
    np.save(data / "digit-sample.npy", digits.heldout.x[:1])


def _import_training_stack() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with quiet():  # TensorFlow's start-up chatter
            import keras
            import tensorflow as tf
    except ImportError as exc:
        raise DependencyMissing(
            f"building reference models needs the training stack ({exc.name} is missing); "
            "install it with: pip install 'edgeloop[train]'"
        ) from exc
    tf.config.experimental.enable_op_determinism()
    return keras, tf


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class _Progress:
    def __init__(self, stream: TextIO):
        self.stream = stream
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{elapsed:6.1f}s  {text}", file=self.stream, flush=True)

    def keras_callback(self, keras: Any, name: str, epochs: int) -> Any:
        progress = self
        every = max(1, epochs // 5)

        class _Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                if (epoch + 1) % every == 0 or epoch + 1 == epochs:
                    logs = logs or {}
                    progress.step(
                        f"      {name}: epoch {epoch + 1}/{epochs}  loss {logs.get('loss', 0):.4f}"
                        f"  train acc {logs.get('accuracy', 0):.4f}"
                    )

        return _Report()
