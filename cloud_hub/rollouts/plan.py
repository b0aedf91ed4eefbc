"""A rollout's plan: which devices update in which step (canary, then waves). Pure.

The operator gives a canary share (``--canary 10%``) and cumulative wave shares
(``--waves 25,50,100``). Devices are put in a fixed order (by the sha256 of their id, so
the order is deterministic and does not follow enrollment order or names), then each step
takes the devices up to its cumulative share of the fleet, rounded up, with at least one
new device per step while devices remain; a step left without devices is dropped. Ten
devices with ``--canary 10% --waves 25,50,100`` give a canary of 1 device, then waves of
2 (up to 3 = 25% rounded up), 2 (up to 5) and 5.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidRequest

CANARY = "canary"
MAX_STEPS = 20


@dataclass(frozen=True)
class Step:
    """One step of a plan: its name (``canary``, ``wave 1``...) and its devices."""

    name: str
    device_ids: tuple[str, ...]


def parse_percent(text: str, *, what: str = "--canary") -> float:
    """``"10%"`` or ``"10"`` -> ``10.0``; from 0 to 100."""
    cleaned = text.strip().removesuffix("%").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise InvalidRequest(f"{what} {text!r} is not a percentage (like 10% or 5)") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise InvalidRequest(f"{what} {text!r} must be from 0% to 100%")
    return value


def parse_waves(text: str) -> tuple[float, ...]:
    """``"25,50,100"`` -> ``(25.0, 50.0, 100.0)``: increasing cumulative shares ending at 100."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise InvalidRequest(f"--waves {text!r} is not a comma-separated list like 25,50,100")
    waves = tuple(parse_percent(part, what="--waves entry") for part in parts)
    check_waves(waves)
    return waves


def check_waves(waves: Sequence[float]) -> None:
    if not waves or len(waves) > MAX_STEPS:
        raise InvalidRequest(f"--waves needs 1 to {MAX_STEPS} entries, not {len(waves)}")
    if any(later <= earlier for earlier, later in itertools.pairwise(waves)):
        shown = ",".join(f"{w:g}" for w in waves)
        raise InvalidRequest(f"--waves {shown} must increase (they are cumulative percentages)")
    if waves[-1] != 100:
        raise InvalidRequest(f"the last of --waves is {waves[-1]:g}%, it must be 100%")
    if waves[0] <= 0:
        raise InvalidRequest("--waves entries must be above 0%")


def device_order(device_ids: Iterable[str]) -> list[str]:
    """The devices in plan order: by sha256 of the id (then the id, for equal hashes)."""
    unique = set(device_ids)
    return sorted(unique, key=lambda d: (hashlib.sha256(d.encode("utf-8")).hexdigest(), d))


def plan_steps(
    device_ids: Iterable[str], *, canary_pct: float, waves_pct: Sequence[float]
) -> list[Step]:
    """Split the devices into a canary (when ``canary_pct`` > 0) and waves."""
    if not 0 <= canary_pct < 100:
        raise InvalidRequest(f"--canary {canary_pct:g}% must be from 0% to below 100%")
    check_waves(waves_pct)
    ordered = device_order(device_ids)
    if not ordered:
        raise InvalidRequest("a rollout needs at least one device")
    shares = [(CANARY, canary_pct)] if canary_pct > 0 else []
    shares += [(f"wave {i}", pct) for i, pct in enumerate(waves_pct, start=1)]
    steps: list[Step] = []
    taken = 0
    for name, pct in shares:
        if taken == len(ordered):
            break
        upto = min(len(ordered), max(math.ceil(len(ordered) * pct / 100 - 1e-9), taken + 1))
        steps.append(Step(name, tuple(ordered[taken:upto])))
        taken = upto
    return steps
