"""``edge-agent doctor``: what this device is, what runs here, and why a model runs where.

The report is built as plain data (for ``--json``) and rendered as text apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .detect import detect_profile
from .engine import Engine
from .errors import EdgeAgentError
from .formats import detect_format
from .probe import probe_runtimes
from .selection import choose_backend


def build_report(
    model: str | os.PathLike[str] | None = None,
    *,
    profile: str | None = None,
    root: str = "/",
    backend: str | None = None,
) -> dict[str, Any]:
    """Everything doctor knows, as JSON-ready data; ``ok`` is False when the model fails."""
    chosen_profile, detection = detect_profile(root=root, override=profile)
    runtimes = probe_runtimes()
    report: dict[str, Any] = {
        "ok": True,
        "profile": {
            "name": chosen_profile.name,
            "description": chosen_profile.description,
            "source": chosen_profile.source,
            "evidence": list(detection.evidence),
            "threads": {
                "intra_op": chosen_profile.intra_op_threads,
                "inter_op": chosen_profile.inter_op_threads,
            },
            "backend_preference": [choice.name for choice in chosen_profile.backends],
        },
        "runtimes": {
            name: {
                "available": info.available,
                "version": info.version,
                "reason": info.reason,
                "providers": list(info.providers),
                "delegates": list(info.delegates),
            }
            for name, info in runtimes.items()
        },
    }
    if model is None:
        return report
    entry: dict[str, Any] = {"path": str(model)}
    report["model"] = entry
    try:
        fmt = detect_format(model)
        entry["format"] = fmt.value
        selection = choose_backend(chosen_profile, fmt, runtimes, only=backend)
        entry["chain"] = [
            {"backend": a.backend, "chosen": a.chosen, "reason": a.reason} for a in selection.chain
        ]
        started = time.perf_counter()
        with Engine.load(model, profile=chosen_profile, backend=backend, runtimes=runtimes) as eng:
            entry["load_ms"] = round((time.perf_counter() - started) * 1000, 2)
            entry["backend"] = eng.backend_name
            entry["accelerators"] = list(eng.backend.accelerators)
            entry["inputs"] = [spec.describe() for spec in eng.inputs]
            entry["outputs"] = [spec.describe() for spec in eng.outputs]
            if eng.card is not None:
                entry["card"] = {"name": eng.card.name, "version": eng.card.version}
    except EdgeAgentError as exc:
        report["ok"] = False
        entry["error"] = str(exc)
    return report


def render(report: dict[str, Any]) -> str:
    profile = report["profile"]
    lines = [
        f"profile   {profile['name']} - {profile['description']}",
        f"          threads intra {profile['threads']['intra_op']}, "
        f"inter {profile['threads']['inter_op']}; "
        f"prefers {' > '.join(profile['backend_preference'])}",
    ]
    lines += [f"          {line}" for line in profile["evidence"]]
    lines.append("runtimes")
    for name, info in report["runtimes"].items():
        if info["available"]:
            extra = info["providers"] or info["delegates"]
            detail = f" ({', '.join(extra)})" if extra else ""
            lines.append(f"  ok      {name} {info['version']}{detail}")
        else:
            lines.append(f"  absent  {name}: {info['reason']}")
    model = report.get("model")
    if model is not None:
        lines.append(f"model     {model['path']}")
        if "format" in model:
            lines.append(f"          format {model['format']}")
        for step in model.get("chain", []):
            verdict = "chosen " if step["chosen"] else "skipped"
            lines.append(f"  {verdict} {step['backend']}: {step['reason']}")
        if "error" in model:
            lines.append(f"  error   {model['error']}")
        else:
            lines.append(
                f"          loaded on {model['backend']} "
                f"({', '.join(model['accelerators'])}) in {model['load_ms']} ms"
            )
            for spec in model["inputs"]:
                lines.append(f"  input   {_tensor(spec)}")
            for spec in model["outputs"]:
                lines.append(f"  output  {_tensor(spec)}")
    return "\n".join(lines)


def _tensor(spec: dict[str, Any]) -> str:
    dims = ", ".join("?" if d < 0 else str(d) for d in spec["shape"])
    return f"{spec['name']} {spec['datatype']} [{dims}]"


def model_label(path: str | os.PathLike[str]) -> str:
    return Path(path).name
