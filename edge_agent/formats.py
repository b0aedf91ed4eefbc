"""Model file formats: recognising a file and what it holds.

A format is named by the file's suffix and confirmed from its first bytes, so a
renamed or corrupt file is reported as such before any runtime parses it.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from .errors import ModelFormatError, ModelLoadError


class ModelFormat(str, Enum):
    ONNX = "onnx"
    TFLITE = "tflite"
    TENSORRT_ENGINE = "tensorrt-engine"

    def __str__(self) -> str:
        return self.value


_SUFFIXES = {
    ".onnx": ModelFormat.ONNX,
    ".tflite": ModelFormat.TFLITE,
    ".engine": ModelFormat.TENSORRT_ENGINE,
    ".plan": ModelFormat.TENSORRT_ENGINE,
}


def detect_format(path: str | os.PathLike[str]) -> ModelFormat:
    """The format of the model at ``path``, checked against its leading bytes.

    Raises :class:`ModelFormatError` for an unknown suffix and
    :class:`ModelLoadError` for a missing, empty or mislabelled file.
    """
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_SUFFIXES))
        raise ModelFormatError(
            f"{path}: unknown model format {path.suffix or '(no suffix)'!r} (expected {known})"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read model file: {exc.strerror}") from exc
    if not head:
        raise ModelLoadError(f"{path}: model file is empty")
    _check_magic(path, fmt, head)
    return fmt


def _check_magic(path: Path, fmt: ModelFormat, head: bytes) -> None:
    if fmt is ModelFormat.TFLITE and head[4:8] != b"TFL3":
        raise ModelLoadError(f"{path}: not a TFLite flatbuffer (missing the 'TFL3' identifier)")
    # An ONNX ModelProto starts with a protobuf field tag; field 1 (ir_version, varint)
    # is written first by every exporter we know. Anything else is not ONNX.
    if fmt is ModelFormat.ONNX and head[0] != 0x08:
        raise ModelLoadError(f"{path}: not an ONNX model (bad protobuf header)")
