"""How sure the local model is of each answer, and the policy that calls an answer hard.

Every score is a *confidence*: higher means surer, so one rule covers all of them: an
answer is hard, and worth sending to the cloud, when its confidence is below the
policy's threshold.

* ``max_probability``: the top class's probability, in [0, 1].
* ``margin``: the top probability minus the runner-up's, in [0, 1].
* ``entropy``: one minus the entropy of the distribution divided by log(classes), in
  [0, 1]; 1 is a one-hot answer, 0 a uniform one.

Inputs are rows of class probabilities (what the reference models output); a batch of
shape ``(n, classes)`` gives ``n`` confidences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SCORES", "Policy", "confidence"]

SCORES = ("max_probability", "margin", "entropy")
_TINY = 1e-12


def confidence(probabilities: np.ndarray, score: str) -> np.ndarray:
    """Confidence of each row of ``probabilities`` (shape ``(n, classes)``) under ``score``."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected rows of class probabilities (n, classes>=2), got {p.shape}")
    if score == "max_probability":
        result: np.ndarray = p.max(axis=1)
    elif score == "margin":
        top2 = np.partition(p, -2, axis=1)[:, -2:]
        result = top2[:, 1] - top2[:, 0]
    elif score == "entropy":
        clipped = np.clip(p, _TINY, 1.0)
        entropy = -(clipped * np.log(clipped)).sum(axis=1)
        result = 1.0 - entropy / np.log(p.shape[1])
    else:
        raise ValueError(f"unknown score {score!r}: expected one of {', '.join(SCORES)}")
    return np.clip(result, 0.0, 1.0)


@dataclass(frozen=True)
class Policy:
    """Offload an answer when its ``score`` confidence is below ``threshold``."""

    score: str = "max_probability"
    threshold: float = 0.9

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}: expected one of {', '.join(SCORES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold!r} is not in [0, 1]")

    def confidence(self, probabilities: np.ndarray) -> np.ndarray:
        return confidence(probabilities, self.score)

    def is_hard(self, probabilities: np.ndarray) -> np.ndarray:
        """One bool per row: True where the answer should go to the cloud."""
        hard: np.ndarray = self.confidence(probabilities) < self.threshold
        return hard
