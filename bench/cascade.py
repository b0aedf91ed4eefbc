"""The cascade: edge accuracy, cloud accuracy, and what offloading the hard inputs buys.

Models, in-process through :class:`Engine` (ONNX Runtime, profile :data:`PROFILE`): the
edge model is ``digits-edge-int8.onnx`` (what a device ships), the cloud model
``digits-cloud-fp32.onnx``. Every validation and held-out digit goes through both.

The threshold is calibrated on the **validation** split only, with
:func:`edge_agent.offload.calibrate.choose_for_offload` at an offload budget of
:data:`TARGET_OFFLOAD` (20%) and the ``max_probability`` score: a budget is what an
operator sets, and 20% leaves room under the 25% goal for held-out drift. That
threshold is then applied, unchanged, to the **held-out** split, where every figure is
measured:

- ``edge_acc``, ``cloud_acc``: each model alone.
- ``cascade_acc``: cloud answer where the edge confidence is below the threshold, edge
  answer elsewhere; goal: at most 0.5 point below ``cloud_acc`` (``cascade_gap_pt``).
- ``offload_fraction``: the share of held-out inputs offloaded; goal <= 25%.

The whole held-out curve (cascade accuracy against offload fraction, one line per
score) is written as a PNG to ``artifacts/bench/cascade-curve.png`` under the repository
(or ``$EDGELOOP_BENCH_OUT``); its path is printed. ``--quick`` changes nothing: the run
takes seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_agent.engine import Engine
from edge_agent.offload.calibrate import CurvePoint, choose_for_offload, curve
from edge_agent.offload.calibrate_cli import predict_probabilities
from edge_agent.offload.scores import SCORES, confidence

from ._harness import PROFILE, Figure, Goal, figures_dict, log, print_table, reference_dir

EDGE = Path("digits-edge", "digits-edge-int8.onnx")
CLOUD = Path("digits-cloud", "digits-cloud-fp32.onnx")
VALIDATION = Path("data", "digits-validation.npz")
HELDOUT = Path("data", "digits-heldout.npz")
SCORE = "max_probability"
TARGET_OFFLOAD = 0.2
OFFLOAD_GOAL = Goal("<=", 0.25)
GAP_GOAL = Goal("<=", 0.5)
PNG_NAME = "cascade-curve.png"
_ROOT = Path(__file__).resolve().parent.parent


def run(quick: bool) -> dict[str, object]:
    """Calibrate on validation, measure on held-out, plot the curve, return the figures."""
    del quick  # the full run takes seconds
    models = reference_dir()
    splits = {name: _load(models / path) for name, path in (("val", VALIDATION), ("held", HELDOUT))}
    log(f"cascade: {EDGE.name} and {CLOUD.name} on {', '.join(splits)} digits")
    edge = _probabilities(models / EDGE, splits)
    cloud = _probabilities(models / CLOUD, splits)

    _, y_val = splits["val"]
    calibration = curve(confidence(edge["val"], SCORE), edge["val"].argmax(axis=1), y_val)
    chosen = choose_for_offload(calibration, TARGET_OFFLOAD)
    log(
        f"cascade: validation threshold {chosen.threshold!r} ({SCORE}) offloads "
        f"{chosen.offloaded}/{chosen.total} at a budget of {TARGET_OFFLOAD:g}"
    )

    _, y = splits["held"]
    local, remote = edge["held"].argmax(axis=1), cloud["held"].argmax(axis=1)
    hard = confidence(edge["held"], SCORE) < chosen.threshold
    cascade = np.where(hard, remote, local)
    edge_acc, cloud_acc = float(np.mean(local == y)), float(np.mean(remote == y))
    cascade_acc = float(np.mean(cascade == y))
    figures = [
        Figure("edge_acc", "edge-only accuracy (int8)", edge_acc, "frac"),
        Figure("cloud_acc", "cloud-only accuracy (fp32)", cloud_acc, "frac"),
        Figure("cascade_acc", "cascade accuracy", cascade_acc, "frac"),
        Figure(
            "cascade_gap_pt", "cloud minus cascade", 100 * (cloud_acc - cascade_acc), "pt", GAP_GOAL
        ),
        Figure("offload_fraction", "held-out offload", float(np.mean(hard)), "frac", OFFLOAD_GOAL),
        Figure("val_offload_fraction", "validation offload", chosen.offload_fraction, "frac"),
    ]
    print_table(
        f"cascade: {SCORE} threshold {chosen.threshold:.6f} (validation, offload <= "
        f"{TARGET_OFFLOAD:g}), {len(y)} held-out digits, {PROFILE}",
        figures,
    )
    curves = {score: curve(confidence(edge["held"], score), local, y, remote) for score in SCORES}
    png = _plot(curves, edge_acc, cloud_acc, (float(np.mean(hard)), cascade_acc), _out_dir())
    print(f"curve: {png}", flush=True)
    return {**figures_dict(figures), "threshold": chosen.threshold, "curve_png": str(png)}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["x"], data["y"]


def _probabilities(
    model: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, np.ndarray]:
    with Engine.load(model, profile=PROFILE, backend="onnxruntime") as engine:
        return {name: predict_probabilities(engine, x) for name, (x, _) in splits.items()}


def _out_dir() -> Path:
    configured = os.environ.get("EDGELOOP_BENCH_OUT")
    return Path(configured) if configured else _ROOT / "artifacts" / "bench"


def _plot(
    curves: dict[str, list[CurvePoint]],
    edge_acc: float,
    cloud_acc: float,
    chosen: tuple[float, float],
    out_dir: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for score, points in curves.items():
        ax.step(
            [p.offload_fraction for p in points],
            [p.cascade_accuracy or 0.0 for p in points],
            where="post",
            label=f"cascade, {score}",
        )
    ax.axhline(cloud_acc, color="black", linestyle="--", linewidth=1, label="cloud only")
    ax.axhline(edge_acc, color="grey", linestyle=":", linewidth=1, label="edge only (int8)")
    ax.axvline(OFFLOAD_GOAL.target, color="red", linestyle=":", linewidth=1, label="25% budget")
    ax.plot(*chosen, "o", color="red", label=f"calibrated ({SCORE}, validation)")
    ax.set_xlabel("offload fraction (held-out)")
    ax.set_ylabel("accuracy (held-out)")
    # A score that reaches 1.0 (int8 outputs saturate) never offloads everything.
    furthest = max(p.offload_fraction for points in curves.values() for p in points)
    ax.set_xlim(0, min(1.0, max(0.3, 1.1 * furthest)))
    ax.set_ylim(max(0.0, min(edge_acc, cloud_acc) - 0.02), 1.0)
    ax.set_title("digits: edge int8 -> cloud fp32 cascade")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PNG_NAME
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target
