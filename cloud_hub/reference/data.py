"""The digits data set (bundled with scikit-learn) and its fixed splits.

Images are 8x8 grey levels 0..16; models take them as float32 NHWC in [0, 1].
The split is stratified and seeded: 60% train, 15% validation (for calibrating
thresholds), 25% held out (for every accuracy we report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PIXEL_SCALE = 1.0 / 16.0
PREPROCESSING = {
    "description": "8x8 grey-level digit (values 0..16) divided by 16, as NHWC float32",
    "layout": "NHWC",
    "shape": [8, 8, 1],
    "scale": PIXEL_SCALE,
    "offset": 0.0,
}
LABELS = [str(digit) for digit in range(10)]


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, (n, 8, 8, 1)
    y: np.ndarray  # int64, (n,)


@dataclass(frozen=True)
class Digits:
    train: Split
    validation: Split
    heldout: Split


def load_digits_splits(seed: int) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images * PIXEL_SCALE).astype(np.float32)[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    x_rest, x_held, y_rest, y_held = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.2, random_state=seed, stratify=y_rest
    )
    return Digits(Split(x_train, y_train), Split(x_val, y_val), Split(x_held, y_held))


def with_shifts(split: Split) -> Split:
    """``split`` plus copies moved one pixel up, down, left and right (5x the rows)."""
    moved = [split.x]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        moved.append(np.roll(split.x, step, axis=axis))
    return Split(np.concatenate(moved), np.tile(split.y, len(moved)))
