"""The engine: one model, loaded on the best backend this device has.

This is the in-process API applications embed, and what the agent's local
server and CLI use::

    from edge_agent import Engine
    with Engine.load("digits-edge-int8.tflite") as engine:
        outputs = engine.run({"image": batch})
        best = engine.classify(batch)[0]
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .backends import Backend, BackendOptions, backend_class
from .detect import detect_profile
from .errors import InputError, ModelFormatError, ModelLoadError
from .formats import ModelFormat, detect_format
from .model_card import ModelCard, read_card
from .probe import RuntimeInfo, probe_runtimes
from .profiles import BackendChoice, DeviceProfile, load_profile
from .selection import Selection, choose_backend
from .tensors import TensorSpec


@dataclass(frozen=True)
class Classification:
    """The top classes for one input, best first."""

    classes: tuple[int, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def confidence(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict[str, object]:
        return {
            "top": [
                {"class": c, "label": label, "probability": round(p, 6)}
                for c, label, p in zip(self.classes, self.labels, self.probabilities, strict=True)
            ],
            "confidence": round(self.confidence, 6),
        }


class Engine:
    """A model loaded on one backend, with its card and the reason for the choice."""

    def __init__(
        self,
        backend: Backend,
        *,
        profile: DeviceProfile,
        selection: Selection,
        model_format: ModelFormat,
        card: ModelCard | None = None,
    ):
        self.backend = backend
        self.profile = profile
        self.selection = selection
        self.model_format = model_format
        self.card = card

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        *,
        profile: DeviceProfile | str | None = None,
        backend: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        runtimes: Mapping[str, RuntimeInfo] | None = None,
        warmup: int = 1,
        pause_s: float = 0.0,
    ) -> Engine:
        """Load ``model`` on the backend the device profile prefers and warm it up.

        ``profile`` is a profile, a bundled profile name or a path; None detects
        the hardware. ``backend`` forces one backend by name. ``pause_s`` is a sleep
        before the runtime loads the model and before each warm-up run: a load beside a
        busy server (an update) then gives the cores back between its steps instead of
        taking them in one go.
        """
        path = Path(model)
        fmt = detect_format(path)
        resolved = _resolve_profile(profile)
        size = path.stat().st_size
        if size > resolved.max_model_bytes:
            raise ModelLoadError(
                f"{path}: {size} bytes is over profile {resolved.name}'s max_model_bytes "
                f"({resolved.max_model_bytes})"
            )
        found = runtimes if runtimes is not None else probe_runtimes()
        selection = choose_backend(resolved, fmt, found, only=backend)
        if selection.choice is None:
            raise ModelFormatError(
                f"{path}: no backend here can run {fmt} models: {selection.explain()}"
            )
        options = replace(_options(resolved, selection.choice, cache_dir), pause_s=pause_s)
        instance = backend_class(selection.choice.name)(path, options)
        engine = cls(
            instance, profile=resolved, selection=selection, model_format=fmt, card=read_card(path)
        )
        for _ in range(warmup):
            if pause_s > 0:
                time.sleep(pause_s)
            engine.run(engine.example_inputs())
        return engine

    # -- running ------------------------------------------------------------------------

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.backend.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.backend.outputs

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; float in, float out, whatever the model stores."""
        return self.backend.run(feeds)

    def classify(self, batch: np.ndarray, top_k: int = 3) -> list[Classification]:
        """Top-``k`` classes for each row of ``batch`` (a single-input classifier)."""
        if len(self.inputs) != 1:
            raise InputError(f"classify needs a single-input model; this one takes {self.inputs}")
        spec = self.inputs[0]
        if batch.ndim == len(spec.shape) - 1:
            batch = batch[np.newaxis]
        scores = self.run({spec.name: batch})[self.outputs[0].name]
        probabilities = self._probabilities(scores.reshape(scores.shape[0], -1))
        return [self._top(row, top_k) for row in probabilities]

    def example_inputs(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zero-filled inputs of the model's shapes (open dimensions set to ``batch``)."""
        return {
            spec.name: np.zeros([batch if d < 0 else d for d in spec.shape], dtype=spec.dtype)
            for spec in self.inputs
        }

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        scores = scores.astype(np.float32, copy=False)
        kind = self.card.output_kind if self.card else None
        looks_normalised = bool(
            np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=0.02)
        )
        if kind == "probabilities" or (kind is None and looks_normalised):
            return scores
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def _top(self, row: np.ndarray, k: int) -> Classification:
        order = np.argsort(-row, kind="stable")[:k]
        labels = self.card.labels if self.card and self.card.labels else []
        return Classification(
            classes=tuple(int(i) for i in order),
            labels=tuple(labels[i] if i < len(labels) else str(i) for i in order),
            probabilities=tuple(float(row[i]) for i in order),
        )


def _resolve_profile(profile: DeviceProfile | str | None) -> DeviceProfile:
    if isinstance(profile, DeviceProfile):
        return profile
    if profile is None:
        return detect_profile()[0]
    return load_profile(profile)


def _options(
    profile: DeviceProfile, choice: BackendChoice, cache_dir: str | os.PathLike[str] | None
) -> BackendOptions:
    # A profile sized for a bigger board must not oversubscribe a smaller one.
    cores = os.cpu_count() or 1
    return BackendOptions(
        intra_op_threads=min(profile.intra_op_threads, cores),
        inter_op_threads=profile.inter_op_threads,
        providers=choice.providers or ("CPUExecutionProvider",),
        delegates=choice.delegates or ("xnnpack",),
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
    )
