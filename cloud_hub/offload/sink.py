"""Where the offload server hands each answered device input: the hard-example store.

The server calls :meth:`HardExampleSink.submit` once per answered request from a device,
after the answer is on its way; a sink must never block or raise into its caller.
``edge_answer`` holds what the agent said it answered itself, from the request-level
parameters ``edgeloop_edge_label`` (int), ``edgeloop_edge_score`` (float) and
``edgeloop_edge_version`` (string) as keys ``label``, ``score`` and ``version``; for a
request of several rows ``edgeloop_edge_labels`` and ``edgeloop_edge_scores`` (strings of
comma-separated values, one per row) as keys ``labels`` (list of int) and ``scores`` (list
of float). Any may be absent, and the whole is None when the request carried none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

__all__ = ["EDGE_PARAMETERS", "HardExampleSink", "OffloadedInput"]

#: Request parameter -> key in ``OffloadedInput.edge_answer``.
EDGE_PARAMETERS = {
    "edgeloop_edge_label": "label",
    "edgeloop_edge_score": "score",
    "edgeloop_edge_version": "version",
    "edgeloop_edge_labels": "labels",
    "edgeloop_edge_scores": "scores",
}


@dataclass(frozen=True)
class OffloadedInput:
    device_id: str | None
    model: str
    version: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    edge_answer: dict[str, Any] | None
    received_at: datetime


class HardExampleSink(Protocol):
    def submit(self, example: OffloadedInput) -> None: ...
