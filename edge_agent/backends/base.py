"""The one interface every inference backend implements.

A backend loads one model file and runs it. The public methods here enforce the
checks (input names, shapes, dtypes, a byte cap), convert float values to and from
a quantized model's integer tensors, and turn any vendor exception into an
:class:`~edge_agent.errors.EdgeAgentError`. Subclasses implement only ``_load``,
``_run`` and ``_close`` and import their vendor SDK inside their own module, so a
device without TensorRT never imports it.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import BackendError, EdgeAgentError, InputError, ModelLoadError
from ..formats import ModelFormat
from ..tensors import TensorSpec, check_input

# Inputs larger than this are refused before they reach a runtime (256 MiB).
DEFAULT_MAX_INPUT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model: the device profile's settings for one backend."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # ONNX Runtime execution providers, in order of preference.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # LiteRT delegates, in order of preference ("edgetpu", "gpu", "xnnpack").
    delegates: tuple[str, ...] = ("xnnpack",)
    # Where compiled engines and timing caches are kept (TensorRT, TensorRT EP).
    cache_dir: Path | None = None
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    extra: Mapping[str, str] = field(default_factory=dict)
    # A sleep just before the runtime loads the model (see ``Engine.load``'s ``pause_s``).
    pause_s: float = 0.0


class Backend(ABC):
    """A loaded model on one runtime."""

    #: Short name used in profiles and reports ("onnxruntime", "litert", "tensorrt").
    name: ClassVar[str]
    #: Model formats this backend can load.
    formats: ClassVar[tuple[ModelFormat, ...]]

    def __init__(self, path: str | os.PathLike[str], options: BackendOptions | None = None):
        self.path = Path(path)
        self.options = options or BackendOptions()
        #: What the backend actually uses (providers, delegates), filled by ``_load``.
        self.accelerators: tuple[str, ...] = ()
        self._closed = False
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise ModelLoadError(f"{self.path}: no such model file") from None
        if size == 0:
            raise ModelLoadError(f"{self.path}: model file is empty")
        if self.options.pause_s > 0:
            time.sleep(self.options.pause_s)
        try:
            self._inputs, self._outputs = self._load()
        except EdgeAgentError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{self.path}: {self.name} cannot load this model ({_first_line(exc)})"
            ) from exc
        self._input_names = frozenset(spec.name for spec in self._inputs)
        self._fast = tuple(_FastCheck.of(spec) for spec in self._inputs)
        self._quantized_outputs = tuple(s for s in self._outputs if s.quantization is not None)

    # -- public surface -----------------------------------------------------------------

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (input name -> float or int array).

        Raises :class:`InputError` when the feeds do not match the model and
        :class:`BackendError` when the runtime fails on valid input.
        """
        if self._closed:
            raise BackendError(f"{self.name}: model {self.path.name} is closed")
        checked = self._check_feeds(feeds)
        try:
            raw = self._run(checked)
        except EdgeAgentError:
            raise
        except Exception as exc:
            raise BackendError(f"{self.name}: inference failed ({_first_line(exc)})") from exc
        return self._dequantize(raw)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for subclasses -----------------------------------------------------------------

    @abstractmethod
    def _load(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Load ``self.path``; return the input and output specs."""

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on checked feeds already in the model's stored dtypes."""

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources."""

    # -- checks and conversions ---------------------------------------------------------

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if feeds.keys() != self._input_names:
            _raise_name_mismatch(feeds, self._input_names)
        checked: dict[str, np.ndarray] = {}
        total = 0
        for spec, fast in zip(self._inputs, self._fast, strict=False):
            value = feeds[spec.name]
            if fast is None or not fast.accepts(value):
                value = check_input(spec, value)  # converts, or raises with the reason
            total += value.nbytes
            if spec.quantization is not None:
                value = spec.quantization.quantize(value, spec.stored_dtype)
            checked[spec.name] = value
        if total > self.options.max_input_bytes:
            raise InputError(
                f"inputs hold {total} bytes, over the limit of {self.options.max_input_bytes}"
            )
        return checked

    def _dequantize(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec in self._quantized_outputs:
            assert spec.quantization is not None
            raw[spec.name] = spec.quantization.dequantize(raw[spec.name])
        return raw


@dataclass(frozen=True)
class _FastCheck:
    """The common case decided in a few comparisons: the exact dtype, only the batch open.

    Anything this does not accept goes through :func:`check_input`, which converts
    or explains, so the fast path never changes an answer.
    """

    dtype: np.dtype
    rank: int
    tail: tuple[int, ...]

    @classmethod
    def of(cls, spec: TensorSpec) -> _FastCheck | None:
        if not spec.shape or any(dim < 0 for dim in spec.shape[1:]):
            return None
        return cls(spec.dtype, len(spec.shape), spec.shape[1:])

    def accepts(self, value: object) -> bool:
        return (
            type(value) is np.ndarray
            and value.dtype == self.dtype
            and value.ndim == self.rank
            and value.shape[1:] == self.tail
        )


def _raise_name_mismatch(feeds: Mapping[str, object], expected: frozenset[str]) -> None:
    missing = sorted(expected - feeds.keys())
    unknown = sorted(set(feeds) - expected)
    parts = []
    if missing:
        parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
    if unknown:
        parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
    raise InputError("; ".join(parts) + f" (the model takes {', '.join(sorted(expected))})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 300 else line[:297] + "..."
