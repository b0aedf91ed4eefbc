"""Staged model rollouts: canary, then waves, each gated on telemetry; halt and roll back.

::

    from cloud_hub.rollouts import RolloutBackend, RolloutController, Rollouts

    rollout = Rollouts(registry).push(
        "digits-edge", "1.1.0", fleet="lab", canary_pct=10, waves_pct=(25, 50, 100),
        soak=timedelta(minutes=10), gates=["p99_ms<=50", "error_rate<=0.01"],
    )
    controller = RolloutController(registry, settings)   # in cloud-hub serve
    controller.start(); ...; controller.stop()
    backend = RolloutBackend(registry)                    # for the gRPC Ota service

Decisions are pure functions (:mod:`.plan`, :mod:`.gates`, :func:`.controller.decide`);
:mod:`.store` and :mod:`.progress` do the database work. See docs/ota.md.
"""

from __future__ import annotations

from .controller import Decision, RolloutController, decide
from .gates import Gate, parse_gate, parse_gates
from .plan import Step, parse_percent, parse_waves, plan_steps
from .service import Rollouts
from .store import Assignment, Rollout, Wave

__all__ = [
    "Assignment",
    "Decision",
    "Gate",
    "Rollout",
    "RolloutBackend",
    "RolloutController",
    "Rollouts",
    "Step",
    "Wave",
    "decide",
    "parse_gate",
    "parse_gates",
    "parse_percent",
    "parse_waves",
    "plan_steps",
]


def __getattr__(name: str) -> object:
    # The backend imports the gRPC service (grpc); load it only when asked for.
    if name == "RolloutBackend":
        from .backend import RolloutBackend

        return RolloutBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
