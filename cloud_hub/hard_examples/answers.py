"""From an offloaded request to the rows it becomes: pure functions, no database.

A request holds a batch of ``n`` samples when the cloud's answer (the first 2-D float
output, shape ``(n, classes)``) and every input have ``n`` rows; it becomes ``n`` rows, each
with its own slice of the inputs (kept with a leading dimension of 1, so rows stack back
into a batch). Any other request becomes one row holding the inputs as they came.

The edge's answer comes in request parameters (see :mod:`cloud_hub.offload.sink`): one
``label`` and ``score`` for a request of one sample, or ``labels`` and ``scores`` lists
with a value per sample for a batch (a list of another length is ignored). A value of the
wrong type is dropped, never trusted.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the offload server's package is heavy; only its shape is needed here
    from ..offload.sink import OffloadedInput

MAX_VERSION_CHARS = 64


@dataclass(frozen=True)
class Answer:
    label: int | None = None
    score: float | None = None


@dataclass(frozen=True)
class Sample:
    """One row to store: a sample's inputs and both answers."""

    inputs: dict[str, np.ndarray]
    cloud: Answer
    edge: Answer
    edge_version: str | None

    @property
    def agreed(self) -> bool | None:
        if self.cloud.label is None or self.edge.label is None:
            return None
        return self.cloud.label == self.edge.label


def cloud_answers(outputs: Mapping[str, np.ndarray]) -> list[Answer] | None:
    """Label (argmax) and score (max) per row of the first 2-D float output; None if none.

    A row holding a NaN has no answer; an infinite maximum keeps its label, not its score.
    """
    for array in outputs.values():
        value = np.asarray(array)
        if value.ndim == 2 and value.shape[1] > 0 and np.issubdtype(value.dtype, np.floating):
            labels = value.argmax(axis=1)
            scores = value.max(axis=1)
            broken = np.isnan(value).any(axis=1)  # NaN anywhere: the row has no answer
            return [
                Answer() if nan else Answer(int(label), _finite(float(score)))
                for label, score, nan in zip(labels, scores, broken, strict=True)
            ]
    return None


def edge_answer(given: Mapping[str, Any] | None) -> tuple[Answer, str | None]:
    """The edge's answer and model version from ``OffloadedInput.edge_answer``."""
    if not given:
        return Answer(), None
    label: Any = given.get("label")
    score: Any = given.get("score")
    version: Any = given.get("version")
    return (
        Answer(
            int(label) if _is_int(label) and -(2**31) <= int(label) < 2**31 else None,
            _finite(float(score)) if _is_number(score) else None,
        ),
        version[:MAX_VERSION_CHARS] if isinstance(version, str) and version else None,
    )


def edge_answers(given: Mapping[str, Any] | None, rows: int) -> list[Answer] | None:
    """The edge's answer per row from the ``labels``/``scores`` lists; None without them.

    Lists of another length than ``rows`` say nothing (None); a bad item is no answer.
    """
    labels: Any = (given or {}).get("labels")
    if not isinstance(labels, list) or len(labels) != rows:
        return None
    scores: Any = (given or {}).get("scores")
    if not isinstance(scores, list) or len(scores) != rows:
        scores = [None] * rows
    return [
        edge_answer({"label": label, "score": score})[0]
        for label, score in zip(labels, scores, strict=True)
    ]


def samples(example: OffloadedInput) -> list[Sample]:
    """The rows ``example`` becomes (see the module docstring)."""
    answers = cloud_answers(example.outputs)
    edge, edge_version = edge_answer(example.edge_answer)
    inputs = {name: np.asarray(value) for name, value in example.inputs.items()}
    n = len(answers) if answers is not None else 0
    if n > 1 and inputs and all(a.ndim >= 1 and a.shape[0] == n for a in inputs.values()):
        assert answers is not None
        edges = edge_answers(example.edge_answer, n)
        version = edge_version if edges is not None else None
        return [
            Sample(
                {k: v[i : i + 1] for k, v in inputs.items()},
                answer,
                edges[i] if edges is not None else Answer(),
                version,
            )
            for i, answer in enumerate(answers)
        ]
    cloud = answers[0] if answers is not None and n == 1 else Answer()
    return [Sample(inputs, cloud, edge, edge_version)]


def encode_inputs(inputs: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz of ``inputs`` (no pickles: object arrays are refused)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, value in inputs.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


def decode_inputs(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
