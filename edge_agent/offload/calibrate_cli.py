"""``edge-agent calibrate``: pick the cascade threshold for a model on labelled data.

The command loads the model with :class:`~edge_agent.engine.Engine`, runs it on a
validation ``.npz`` (``x``: inputs, ``y``: integer labels), scores each answer with
:func:`~edge_agent.offload.scores.confidence`, and chooses the threshold with
:mod:`edge_agent.offload.calibrate`. It prints a few curve points around the choice and
the ``[offload]`` lines to paste into the agent's config, or with ``--write CONFIG`` sets
them in that config file itself (:mod:`.config_write`); the daemon reads them at start.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ModelError
from .calibrate import CurvePoint, choose_for_accuracy, choose_for_offload, curve
from .config_write import write_offload_keys
from .scores import SCORES, confidence

__all__ = ["add_parser", "config_lines", "predict_probabilities"]

#: Curve points shown on each side of the chosen one.
WINDOW = 3
_CHUNK = 256

_DESCRIPTION = """\
Run MODEL on labelled validation data and choose the cascade threshold: an answer whose
confidence is below the threshold is offloaded to the hub, the rest are answered here.

Choose exactly one target:
  --target-offload F   the largest threshold that offloads at most a fraction F of inputs
  --target-accuracy A  the smallest offload whose accuracy on the inputs kept local is >= A
                       (fails, naming the best reachable accuracy, when none reaches A)

Scores (confidence, higher = surer): max_probability (top class probability), margin
(top minus runner-up), entropy (1 - normalised entropy).

--data is an .npz with 'x' (inputs, one row per sample, the model's input shape) and 'y'
(integer class labels). Use a validation split, not the data you report results on.
Prints the curve around the chosen point and the lines to paste into the agent config:

  [offload]
  score = "max_probability"
  threshold = 0.93...

or, with --write CONFIG, sets score and threshold in that file's [offload] table (the rest
of the file is kept as it is). The agent reads [offload] when it starts: restart it after.
"""


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``calibrate`` on the ``edge-agent`` sub-command parser."""
    cmd = commands.add_parser(
        "calibrate",
        parents=[common],
        help="choose the offload threshold for a model from labelled validation data",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("model", metavar="MODEL", help="model file (.onnx, .tflite, .engine/.plan)")
    cmd.add_argument(
        "--data", required=True, metavar="VALIDATION.npz", help="labelled inputs: 'x' and 'y'"
    )
    target = cmd.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--target-offload", type=float, metavar="F", help="offload at most this fraction (0..1)"
    )
    target.add_argument(
        "--target-accuracy",
        type=float,
        metavar="A",
        help="reach at least this accuracy (0..1) on the inputs kept local",
    )
    cmd.add_argument(
        "--score",
        choices=SCORES,
        default="max_probability",
        help="confidence score (default max_probability)",
    )
    cmd.add_argument("--profile", help="device profile name or .toml (default: detect)")
    cmd.add_argument("--backend", help="force one backend (onnxruntime, litert, tensorrt)")
    cmd.add_argument(
        "--write",
        metavar="CONFIG",
        help="set score and threshold in this agent config's [offload] table",
    )
    cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
    cmd.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from ..engine import Engine

    x, y = load_labelled(args.data)
    with Engine.load(args.model, profile=args.profile, backend=args.backend) as engine:
        probabilities = predict_probabilities(engine, x)
    _check_labels(y, probabilities.shape[1], args.data)
    points = curve(confidence(probabilities, args.score), probabilities.argmax(axis=1), y)
    if args.target_offload is not None:
        target = ("offload", float(args.target_offload))
        chosen = choose_for_offload(points, target[1])
    else:
        target = ("accuracy", float(args.target_accuracy))
        chosen = choose_for_accuracy(points, target[1])
    index = points.index(chosen)
    window = points[max(0, index - WINDOW) : index + WINDOW + 1]
    lines = config_lines(args.score, chosen.threshold)
    if args.write is not None:
        write_offload_keys(Path(args.write), {"score": args.score, "threshold": chosen.threshold})
    if args.json:
        payload = {
            "model": str(args.model),
            "data": str(args.data),
            "score": args.score,
            "target": {target[0]: target[1]},
            "samples": len(y),
            "local_only_accuracy": points[0].local_accuracy,
            "chosen": chosen.to_dict(),
            "curve": [p.to_dict() for p in points],
            "config": "\n".join(lines),
            "written": args.write,
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"model    {args.model}")
    print(f"data     {args.data} ({len(y)} samples)")
    print(f"score    {args.score}; local-only accuracy {points[0].local_accuracy:.4f}")
    print(f"target   {target[0]} {'<=' if target[0] == 'offload' else '>='} {target[1]:g}")
    print()
    print(render_points(window, chosen))
    print()
    if args.write is not None:
        print(f"# written to {args.write} (restart the agent to use it):")
    else:
        print("# paste into the agent config:")
    print("\n".join(lines))
    return 0


def config_lines(score: str, threshold: float) -> list[str]:
    """The ``[offload]`` section; ``repr`` keeps the threshold exact when read back."""
    return ["[offload]", f'score = "{score}"', f"threshold = {threshold!r}"]


def render_points(points: Sequence[CurvePoint], chosen: CurvePoint) -> str:
    """An aligned table of curve points, the chosen one marked with ``>``."""
    rows = [("", "threshold", "offloaded", "offload", "local acc")]
    for p in points:
        local = "-" if math.isnan(p.local_accuracy) else f"{p.local_accuracy:.4f}"
        rows.append(
            (
                ">" if p == chosen else "",
                f"{p.threshold:.6f}",
                f"{p.offloaded}/{p.total}",
                f"{100 * p.offload_fraction:.2f}%",
                local,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        " ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def load_labelled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` from an ``.npz``, with errors that name the file and the keys."""
    file = Path(path)
    try:
        archive = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{file}: no such data file") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{file}: not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{file}: a single array; expected an .npz with 'x' and 'y'")
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            found = ", ".join(repr(k) for k in archive.files) or "none"
            raise InputError(
                f"{file}: missing key(s) {', '.join(repr(k) for k in missing)} "
                f"(found {found}); expected 'x' (inputs) and 'y' (labels)"
            )
        x, y = archive["x"], archive["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{file}: 'y' must be 1-D integer labels, got {y.dtype} {list(y.shape)}")
    if x.ndim < 1 or len(x) != len(y):
        raise InputError(
            f"{file}: 'x' has shape {list(x.shape)} but 'y' has {len(y)} labels; "
            "expected one row of 'x' per label"
        )
    if len(y) == 0:
        raise InputError(f"{file}: no samples")
    return x, y


def predict_probabilities(engine: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(n, classes)`` of ``engine`` (an Engine) for the rows of ``x``."""
    if engine.card is not None and engine.card.task != "classification":
        raise ModelError(f"calibrate needs a classifier; the model card says {engine.card.task!r}")
    if len(engine.inputs) != 1 or not engine.outputs:
        raise ModelError(
            f"calibrate needs a single-input classifier; this model takes "
            f"{len(engine.inputs)} inputs and gives {len(engine.outputs)} outputs"
        )
    spec = engine.inputs[0]
    expected = list(spec.shape[1:])
    if len(expected) != x.ndim - 1 or any(
        d >= 0 and d != got for d, got in zip(expected, x.shape[1:], strict=True)
    ):
        raise InputError(
            f"'x' rows have shape {list(x.shape[1:])} but the model's input {spec.name!r} "
            f"takes {expected} (-1: any)"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"'x' has dtype {x.dtype}; expected numbers")
    x = x.astype(spec.dtype, copy=False)
    chunk = spec.shape[0] if spec.shape and spec.shape[0] > 0 else _CHUNK
    rows: list[np.ndarray] = []
    for start in range(0, len(x), chunk):
        batch = x[start : start + chunk]
        real = len(batch)
        if real < chunk and spec.shape and spec.shape[0] > 0:  # a fixed batch: pad the tail
            batch = np.concatenate([batch, np.repeat(batch[-1:], chunk - real, axis=0)])
        for result in engine.classify(batch, top_k=1_000_000)[:real]:
            row = np.zeros(len(result.classes), dtype=np.float64)
            row[list(result.classes)] = result.probabilities
            rows.append(row)
    probabilities = np.stack(rows)
    if probabilities.shape[1] < 2:
        raise ModelError(
            f"calibrate needs a classifier with at least 2 classes; "
            f"the model gives {probabilities.shape[1]} output value(s) per input"
        )
    return probabilities


def _check_labels(y: np.ndarray, classes: int, path: str) -> None:
    if y.min() < 0 or y.max() >= classes:
        raise InputError(
            f"{path}: labels span {int(y.min())}..{int(y.max())} but the model has "
            f"{classes} classes (0..{classes - 1})"
        )
