"""Model cards: the JSON file beside each artifact that says what the model is.

A card names the model's inputs and outputs, the preprocessing a caller must
apply, the class labels, held-out accuracy, the artifact's sha256 and how it was
built. For ``model.onnx`` the card is ``model.onnx.card.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

CARD_SUFFIX = ".card.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    format: str  # onnx-fp32, onnx-int8, tflite-int8, tensorrt-engine
    file: str
    sha256: str
    bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    task: str = "classification"
    # "probabilities" (already softmaxed) or "logits".
    output_kind: str = "probabilities"
    labels: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "card") -> ModelCard:
        try:
            fields = dict(data)
            fields["inputs"] = [TensorInfo(**t) for t in data["inputs"]]
            fields["outputs"] = [TensorInfo(**t) for t in data["outputs"]]
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{source}: not a valid model card ({exc})") from exc


def card_path(artifact: str | os.PathLike[str]) -> Path:
    path = Path(artifact)
    return path.with_name(path.name + CARD_SUFFIX)


def read_card(artifact: str | os.PathLike[str]) -> ModelCard | None:
    """The card beside ``artifact``, or None when there is none."""
    path = card_path(artifact)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    return ModelCard.from_dict(data, str(path))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
