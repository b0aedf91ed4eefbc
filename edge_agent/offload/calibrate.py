"""Choosing the cascade threshold from labelled validation data: pure functions, no I/O.

The run-time rule is :class:`~edge_agent.offload.scores.Policy`'s: an answer is *hard*
(offloaded) when its confidence is **strictly below** the threshold, and *kept local*
otherwise. Calibration sweeps that threshold over the validation set.

**Candidates.** The offloaded set only changes where the threshold crosses a confidence
seen in the data, so the candidates are the distinct confidences ``u_0 < u_1 < ...``
(threshold ``u_j`` offloads every input whose confidence is below ``u_j``: ``u_0``
offloads nothing), plus ``1.0`` when every confidence is below 1 (it offloads
everything). Each candidate is the *largest* threshold in ``[0, 1]`` that offloads
exactly its set: any threshold in ``(u_{j-1}, u_j]`` offloads the same inputs, so the
chosen value sits on the confidence of the least sure input still kept local. Inputs
with equal confidences are never split: they go together or stay together.

**Per candidate** (:class:`CurvePoint`): the offload fraction, the accuracy on the
inputs kept local (undefined, ``nan``, when none are kept) and, when cloud predictions
are given, the cascade accuracy (cloud answer for offloaded inputs, local answer for
the rest).

**Choosing.**

* :func:`choose_for_offload` ``(F)``: the largest threshold whose offload fraction is
  ``<= F``. Always reachable (threshold ``u_0`` offloads nothing).
* :func:`choose_for_accuracy` ``(A)``: among candidates that keep at least one input
  local, the one with the smallest offload fraction whose local accuracy is ``>= A``.
  Local accuracy is not monotonic in the threshold, so this is the first point that
  meets ``A``, even if a larger threshold would dip below it again. When no candidate
  reaches ``A``, :class:`CalibrationError` names the best local accuracy on offer and
  the offload fraction it costs.

Comparisons against the targets allow ``1e-9`` of floating-point slack, so that
``99/100`` meets a target of ``0.99``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgeAgentError

__all__ = [
    "CalibrationError",
    "CurvePoint",
    "choose_for_accuracy",
    "choose_for_offload",
    "curve",
]

_SLACK = 1e-9


class CalibrationError(EdgeAgentError, ValueError):
    """Calibration inputs are inconsistent, or a target cannot be met on this data."""


@dataclass(frozen=True)
class CurvePoint:
    """One candidate threshold and what it does on the calibration data."""

    threshold: float
    offloaded: int  # inputs with confidence < threshold
    total: int
    local_correct: int  # correct local answers among the inputs kept local
    cascade_correct: int | None = None  # None when no cloud predictions were given

    @property
    def kept(self) -> int:
        return self.total - self.offloaded

    @property
    def offload_fraction(self) -> float:
        return self.offloaded / self.total

    @property
    def local_accuracy(self) -> float:
        """Accuracy on the inputs kept local; ``nan`` when every input is offloaded."""
        return self.local_correct / self.kept if self.kept else math.nan

    @property
    def cascade_accuracy(self) -> float | None:
        return None if self.cascade_correct is None else self.cascade_correct / self.total

    def to_dict(self) -> dict[str, float | int | None]:
        local = self.local_accuracy
        return {
            "threshold": self.threshold,
            "offloaded": self.offloaded,
            "total": self.total,
            "offload_fraction": self.offload_fraction,
            "local_accuracy": None if math.isnan(local) else local,
            "cascade_accuracy": self.cascade_accuracy,
        }


def curve(
    confidences: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray,
    cloud_predictions: np.ndarray | None = None,
) -> list[CurvePoint]:
    """Every candidate threshold, ascending (so offload fractions ascend strictly too).

    ``confidences`` (in ``[0, 1]``), ``predictions`` (the local model's classes),
    ``labels`` and ``cloud_predictions`` are 1-D arrays of one length, at least one.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    local = np.asarray(predictions)
    truth = np.asarray(labels)
    arrays = {"confidences": conf, "predictions": local, "labels": truth}
    if cloud_predictions is not None:
        arrays["cloud_predictions"] = np.asarray(cloud_predictions)
    _check_arrays(arrays)

    order = np.argsort(conf, kind="stable")
    conf = conf[order]
    local_ok = (local[order] == truth[order]).astype(np.int64)
    # before[k] = how many of the k least sure inputs were right.
    local_before = np.concatenate(([0], np.cumsum(local_ok)))
    cloud_before = None
    if cloud_predictions is not None:
        cloud_ok = (arrays["cloud_predictions"][order] == truth[order]).astype(np.int64)
        cloud_before = np.concatenate(([0], np.cumsum(cloud_ok)))

    total = len(conf)
    thresholds, first = np.unique(conf, return_index=True)
    cuts = [(float(t), int(k)) for t, k in zip(thresholds, first, strict=True)]
    if thresholds[-1] < 1.0:
        cuts.append((1.0, total))
    local_total = int(local_before[-1])
    return [
        CurvePoint(
            threshold=t,
            offloaded=k,
            total=total,
            local_correct=local_total - int(local_before[k]),
            cascade_correct=(
                None
                if cloud_before is None
                else int(cloud_before[k]) + local_total - int(local_before[k])
            ),
        )
        for t, k in cuts
    ]


def choose_for_offload(points: Sequence[CurvePoint], target: float) -> CurvePoint:
    """The largest threshold that offloads at most ``target`` (a fraction in ``[0, 1]``)."""
    if not points:
        raise CalibrationError("no calibration points")
    if not 0.0 <= target <= 1.0:
        raise CalibrationError(f"target offload {target!r} is not a fraction in [0, 1]")
    within = [p for p in points if p.offload_fraction <= target + _SLACK]
    # points[0] offloads nothing, so `within` is empty only for a malformed curve.
    if not within:
        least = min(p.offload_fraction for p in points)
        raise CalibrationError(
            f"no threshold offloads at most {target:.4f}; the least reachable is {least:.4f}"
        )
    return max(within, key=lambda p: p.threshold)


def choose_for_accuracy(points: Sequence[CurvePoint], target: float) -> CurvePoint:
    """The smallest offload whose accuracy on the inputs kept local is at least ``target``."""
    if not points:
        raise CalibrationError("no calibration points")
    if not 0.0 <= target <= 1.0:
        raise CalibrationError(f"target accuracy {target!r} is not a fraction in [0, 1]")
    keeping = [p for p in points if p.kept > 0]
    meeting = [p for p in keeping if p.local_accuracy >= target - _SLACK]
    if meeting:
        return min(meeting, key=lambda p: p.offloaded)
    best = max(keeping, key=lambda p: (p.local_accuracy, -p.offloaded))
    raise CalibrationError(
        f"no threshold reaches local accuracy {target:.4f} while keeping any input local: "
        f"the best reachable is {best.local_accuracy:.4f} "
        f"(threshold {best.threshold!r}, offloading {best.offload_fraction:.4f}, "
        f"{best.kept} of {best.total} kept)"
    )


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        if array.ndim != 1:
            raise CalibrationError(f"{name} must be 1-D, got shape {array.shape}")
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise CalibrationError(f"arrays differ in length: {shown}")
    if lengths["confidences"] == 0:
        raise CalibrationError("no samples to calibrate on")
    conf = arrays["confidences"]
    if not np.all(np.isfinite(conf)) or conf.min() < 0.0 or conf.max() > 1.0:
        raise CalibrationError("confidences must be finite and in [0, 1]")
