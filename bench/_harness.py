"""Shared pieces of the benchmarks: interleaved timing, figures with goals, the host.

Timings are taken *interleaved*: the calls being compared alternate inside one loop, so
drift (frequency scaling, a noisy neighbour, the cache warming) hits all of them alike.
"""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

#: The device profile every benchmark runs under (threads, backend preference).
PROFILE = "x86-64-cpu"


def log(text: str) -> None:
    """A progress line, on stderr so stdout stays the table and the JSON line."""
    print(text, file=sys.stderr, flush=True)


# -- reference models --------------------------------------------------------------------


def reference_dir() -> Path:
    """The cached reference models, built on first use (saying so on stderr)."""
    from cloud_hub.reference import reference_models
    from cloud_hub.reference.cache import default_cache_root, recipe_hash

    target = default_cache_root() / f"reference-{recipe_hash(0)}"
    if not (target / "manifest.json").exists():
        log("building reference models (first run only)...")
    return reference_models(progress=sys.stderr)


# -- timing ------------------------------------------------------------------------------


def interleaved_ns(
    calls: Sequence[Callable[[], object]], iterations: int, warmup: int
) -> list[np.ndarray]:
    """Per-call latencies in ns for each of ``calls``, measured alternately.

    Each iteration runs every call once; the order rotates every iteration so no call
    always runs first (or always straight after another). The garbage collector is off
    while timing, so a collection cannot land in one call's samples.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    count = len(calls)
    samples: list[list[int]] = [[] for _ in calls]
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i in range(iterations):
            for j in range(count):
                k = (i + j) % count
                call = calls[k]
                start = clock()
                call()
                samples[k].append(clock() - start)
    finally:
        gc.enable()
    return [np.asarray(s, dtype=np.int64) for s in samples]


def p50_us(samples_ns: np.ndarray) -> float:
    return float(np.median(samples_ns)) / 1e3


# -- figures and the table ---------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A target a figure should meet, such as ``<= 1.05``."""

    op: Literal["<=", ">="]
    target: float

    def met(self, value: float) -> bool:
        return value <= self.target if self.op == "<=" else value >= self.target


@dataclass(frozen=True)
class Figure:
    """One reported number: its JSON key, a label for the table, its unit and goal."""

    key: str
    label: str
    value: float
    unit: Literal["us", "ms", "x", "pt", "frac", "msg/s", "n"]
    goal: Goal | None = None

    def shown(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        if self.unit in ("msg/s", "n"):
            return f"{v:,.0f}" + (" msg/s" if self.unit == "msg/s" else "")
        if self.unit == "frac":
            return f"{100 * v:.2f}%"
        if self.unit == "x":
            return f"{v:.3f}x"
        decimals = 1 if self.unit == "us" else 2
        return f"{v:,.{decimals}f} {self.unit}"


def figures_dict(figures: Sequence[Figure]) -> dict[str, object]:
    """The figures as JSON-ready ``key -> value``; refuses a duplicate key."""
    out: dict[str, object] = {}
    for figure in figures:
        if figure.key in out:
            raise ValueError(f"duplicate figure key {figure.key!r}")
        out[figure.key] = round(figure.value, 6)
    return out


def print_table(title: str, figures: Sequence[Figure], stream: TextIO | None = None) -> None:
    """The figures as an aligned table with ``goal`` and ``met?`` columns."""
    rows = [("figure", "key", "value", "goal", "met?")]
    for f in figures:
        goal = "" if f.goal is None else f"{f.goal.op} {f.shown(f.goal.target)}"
        met = "" if f.goal is None else ("yes" if f.goal.met(f.value) else "NO")
        rows.append((f.label, f.key, f.shown(), goal, met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = stream or sys.stdout
    print(title, file=out)
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip(), file=out)
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths), file=out)
    print(file=out, flush=True)


# -- host --------------------------------------------------------------------------------


def host_info() -> dict[str, object]:
    """What the figures were measured on: enough to compare two runs fairly."""
    try:
        import onnxruntime

        ort_version = str(onnxruntime.__version__)
    except ImportError:
        ort_version = "absent"
    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort_version,
    }
