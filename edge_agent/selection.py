"""Choosing a backend: a pure function of profile, model format and runtimes here.

The answer records every backend it considered and why each was passed over, so
``edge-agent doctor`` can explain the choice and a test can pin it with a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .backends import BACKEND_FORMATS
from .formats import ModelFormat
from .probe import RuntimeInfo
from .profiles import BackendChoice, DeviceProfile


@dataclass(frozen=True)
class Attempt:
    """One backend considered: chosen, or skipped with the reason."""

    backend: str
    chosen: bool
    reason: str

    def describe(self) -> str:
        return f"{self.backend}: {'chosen' if self.chosen else 'skipped'} ({self.reason})"


@dataclass(frozen=True)
class Selection:
    """The backend to use (with providers/delegates narrowed to what is here), and why."""

    choice: BackendChoice | None
    chain: tuple[Attempt, ...]

    def explain(self) -> str:
        return "; ".join(attempt.describe() for attempt in self.chain)


def choose_backend(
    profile: DeviceProfile,
    model_format: ModelFormat,
    runtimes: Mapping[str, RuntimeInfo],
    only: str | None = None,
) -> Selection:
    """Walk the profile's backend preference and take the first that can run the model.

    ``runtimes`` is what :func:`edge_agent.probe.probe_runtimes` found; ``only``
    restricts the walk to one backend (a user's explicit ``--backend``).
    """
    candidates = list(profile.backends)
    if only is not None:
        candidates = [c for c in candidates if c.name == only] or [BackendChoice(name=only)]
    chain: list[Attempt] = []
    for candidate in candidates:
        narrowed, reason = _consider(candidate, model_format, runtimes.get(candidate.name))
        chain.append(Attempt(candidate.name, narrowed is not None, reason))
        if narrowed is not None:
            return Selection(narrowed, tuple(chain))
    if not chain:
        chain.append(Attempt(only or "-", False, f"profile {profile.name} lists no backends"))
    return Selection(None, tuple(chain))


def _consider(
    choice: BackendChoice, fmt: ModelFormat, runtime: RuntimeInfo | None
) -> tuple[BackendChoice | None, str]:
    formats = BACKEND_FORMATS.get(choice.name)
    if formats is None:
        return None, "unknown backend"
    if fmt not in formats:
        return None, f"does not load {fmt} models"
    if runtime is None or not runtime.available:
        return None, runtime.reason if runtime else "not probed"
    if choice.name == "onnxruntime":
        wanted = choice.providers or ("CPUExecutionProvider",)
        providers = tuple(p for p in wanted if p in runtime.providers)
        if not providers:
            return None, f"none of {', '.join(wanted)} is available"
        dropped = [p for p in wanted if p not in providers]
        note = f"; not here: {', '.join(dropped)}" if dropped else ""
        return replace(choice, providers=providers), f"providers {', '.join(providers)}{note}"
    if choice.name == "litert":
        wanted = choice.delegates or ("xnnpack",)
        delegates = tuple(d for d in wanted if d in runtime.delegates)
        dropped = [d for d in wanted if d not in delegates]
        note = f"; not here: {', '.join(dropped)}" if dropped else ""
        shown = ", ".join(delegates) if delegates else "none (reference CPU kernels)"
        return replace(choice, delegates=delegates), f"delegates {shown}{note}"
    return choice, runtime.version or "available"
