"""``cloud-hub push`` and ``cloud-hub rollout list|status|pause|resume|abort``.

``push`` checks everything (the model version exists, the fleet has devices, the gates
parse), stores the plan and prints it with the rollout's id; the controller in
``cloud-hub serve`` then runs it. ``--watch`` follows it until it ends.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..durations import format_duration, parse_duration
from ..errors import InvalidRequest
from ._common import add_json_flag, note, open_registry, print_json, print_table, show_usage, when

if TYPE_CHECKING:
    from ..rollouts import Rollout

FINAL_STATES = ("halted", "aborted", "completed")
WATCH_INTERVAL_S = 2.0


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    _add_push(commands, common)
    rollout = commands.add_parser(
        "rollout", parents=[common], help="list, inspect, pause, resume or abort rollouts"
    )
    sub = rollout.add_subparsers(title="rollout commands", metavar="COMMAND")
    listing = sub.add_parser("list", parents=[common], help="list rollouts, newest first")
    listing.add_argument("--fleet", help="only this fleet's rollouts")
    listing.add_argument("--state", help="running, paused, halted, aborted or completed")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)
    for name, help_text, handler in (
        ("status", "a rollout's waves and each device's progress", _status),
        ("pause", "stop assigning; devices mid-download drop the update", _pause),
        ("resume", "carry on a paused rollout", _resume),
        ("abort", "end a rollout for good (installed devices keep the model)", _abort),
    ):
        cmd = sub.add_parser(name, parents=[common], help=help_text)
        cmd.add_argument("rollout_id", metavar="ID")
        if name == "abort":
            cmd.add_argument("--reason", help="why (shown in status)")
        add_json_flag(cmd)
        cmd.set_defaults(handler=handler)
    show_usage(rollout)


def _add_push(commands: Any, common: argparse.ArgumentParser) -> None:
    push = commands.add_parser(
        "push",
        parents=[common],
        help="roll a model version out to a fleet: canary, then waves",
        description="Start a staged rollout of MODEL:VERSION to a fleet (or some of its "
        "devices): a canary, then waves of cumulative percentages. A wave advances when all "
        "its devices installed the update and their telemetry passed every gate for the "
        "soak time; a breach halts the rollout and rolls that wave back. The controller in "
        "'cloud-hub serve' runs it.",
    )
    push.add_argument("model", metavar="MODEL:VERSION", help="a registered model version")
    push.add_argument("--fleet", required=True, help="the fleet to update")
    push.add_argument(
        "--device", action="append", metavar="ID", help="only this device (repeatable)"
    )
    push.add_argument("--format", help="the artifact format, when the version has several")
    push.add_argument("--canary", default="10%", help="canary share of devices (default 10%%)")
    push.add_argument(
        "--waves", default="25,50,100", help="cumulative wave shares (default 25,50,100)"
    )
    push.add_argument("--soak", default="10m", help="how long a wave must pass (default 10m)")
    push.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="GATE",
        help="e.g. 'p99_ms<=50', 'error_rate<=0.01' (repeatable)",
    )
    push.add_argument(
        "--probation", default="10m", help="device-side probation after a switch (default 10m)"
    )
    push.add_argument(
        "--max-failures",
        default="0%",
        metavar="PCT",
        help="share of a wave that may fail without halting (default 0%%)",
    )
    push.add_argument("--watch", action="store_true", help="show progress until it ends")
    push.add_argument(
        "--watch-interval", type=float, default=WATCH_INTERVAL_S, help=argparse.SUPPRESS
    )
    add_json_flag(push)
    push.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from ..rollouts import Rollouts, parse_gates, parse_percent, parse_waves

    model, version = _model_version(args.model)
    canary = parse_percent(args.canary, what="--canary")
    waves = parse_waves(args.waves)
    tolerance = parse_percent(args.max_failures, what="--max-failures") / 100
    soak, probation = _duration("--soak", args.soak), _duration("--probation", args.probation)
    gates = [str(g) for g in parse_gates(args.gate)]
    with open_registry(args) as registry:
        rollout = Rollouts(registry).push(
            model,
            version,
            fleet=args.fleet,
            format=args.format,
            devices=args.device,
            canary_pct=canary,
            waves_pct=waves,
            soak=soak,
            probation=probation,
            gates=gates,
            failure_tolerance=tolerance,
        )
        if args.json and not args.watch:
            print_json(rollout.to_dict())
            return 0
        print(
            f"rollout {rollout.id}: {rollout.model} {rollout.version} ({rollout.format}) "
            f"to {len(rollout.devices)} devices of fleet {rollout.fleet}"
        )
        print_table(
            ("STEP", "DEVICES", "SHARE", "FIRST DEVICES"),
            [
                (w.name, len(w.device_ids), _share(rollout, w.index), _ids(w.device_ids))
                for w in rollout.waves
            ],
            empty="no steps",
        )
        print(
            f"gates: {', '.join(rollout.gates) or 'none'}; soak "
            f"{format_duration(timedelta(seconds=rollout.soak_seconds))}; probation "
            f"{format_duration(timedelta(seconds=rollout.probation_seconds))}"
        )
        print(rollout.id, flush=True)
        if not args.watch:
            note("the hub's controller (cloud-hub serve) runs it: cloud-hub rollout status ID")
            return 0
        return _watch(Rollouts(registry), rollout.id, args)


def _watch(rollouts: Any, rollout_id: str, args: argparse.Namespace) -> int:
    last = ""
    interval = max(0.05, args.watch_interval)
    while True:
        rollout: Rollout = rollouts.get(rollout_id)
        line = _progress(rollout)
        if line != last:
            print(f"{when(rollouts.registry.now())}  {line}", flush=True)
            last = line
        if rollout.state in FINAL_STATES:
            if args.json:
                print_json(rollout.to_dict())
            return 0 if rollout.state == "completed" else 1
        time.sleep(interval)


def _progress(rollout: Rollout) -> str:
    wave = rollout.current_wave
    where = f"{wave.name} ({wave.index + 1}/{len(rollout.waves)})" if wave else "all waves"
    phases = ", ".join(f"{n} {phase}" for phase, n in sorted(rollout.phases().items()))
    reason = f": {rollout.reason}" if rollout.reason else ""
    return f"{rollout.state} at {where}; {phases}{reason}"


def _list(args: argparse.Namespace) -> int:
    from ..rollouts import Rollouts

    with open_registry(args) as registry:
        found = Rollouts(registry).list(fleet=args.fleet, state=args.state)
    if args.json:
        print_json([r.to_dict() for r in found])
        return 0
    rows = []
    for r in found:
        wave = r.current_wave
        installed = r.phases().get("installed", 0)
        rows.append(
            (
                r.id,
                r.fleet,
                f"{r.model}:{r.version}",
                r.state,
                wave.name if wave else "done",
                f"{installed}/{len(r.devices)}",
                r.created_at,
            )
        )
    print_table(
        ("ID", "FLEET", "MODEL", "STATE", "WAVE", "INSTALLED", "CREATED"),
        rows,
        empty="no rollouts: start one with cloud-hub push MODEL:VERSION --fleet F",
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from ..rollouts import Rollouts

    with open_registry(args) as registry:
        rollout = Rollouts(registry).get(args.rollout_id)
    if args.json:
        print_json(rollout.to_dict())
        return 0
    _show(rollout)
    return 0


def _show(rollout: Rollout) -> None:
    print(f"rollout {rollout.id}: {rollout.model} {rollout.version} ({rollout.format})")
    print(f"fleet:  {rollout.fleet}")
    print(f"state:  {rollout.state}{f' ({rollout.reason})' if rollout.reason else ''}")
    print(f"gates:  {', '.join(rollout.gates) or 'none'}")
    print(
        f"soak:   {format_duration(timedelta(seconds=rollout.soak_seconds))}, probation "
        f"{format_duration(timedelta(seconds=rollout.probation_seconds))}, created "
        f"{when(rollout.created_at)}"
    )
    print()
    print_table(
        ("STEP", "DEVICES", "STARTED", "PASSED", "ROLLED BACK"),
        [
            (w.name, len(w.device_ids), w.started_at, w.passed_at, w.rolled_back_at)
            for w in rollout.waves
        ],
        empty="no steps",
    )
    print()
    names = {w.index: w.name for w in rollout.waves}
    print_table(
        ("DEVICE", "STEP", "ASSIGNED", "PHASE", "%", "FROM", "REASON", "UPDATED"),
        [
            (
                d.device_id,
                names.get(d.wave_index, d.wave_index),
                d.desired,
                d.phase,
                d.percent,
                d.previous_version,
                (d.reason or "")[:60] or None,
                d.updated_at,
            )
            for d in rollout.devices
        ],
        empty="no devices",
    )


def _pause(args: argparse.Namespace) -> int:
    return _change(args, "pause")


def _resume(args: argparse.Namespace) -> int:
    return _change(args, "resume")


def _abort(args: argparse.Namespace) -> int:
    return _change(args, "abort")


def _change(args: argparse.Namespace, verb: str) -> int:
    from ..rollouts import Rollouts

    with open_registry(args) as registry:
        rollouts = Rollouts(registry)
        if verb == "pause":
            rollout = rollouts.pause(args.rollout_id)
        elif verb == "resume":
            rollout = rollouts.resume(args.rollout_id)
        else:
            rollout = rollouts.abort(args.rollout_id, reason=args.reason)
    if args.json:
        print_json(rollout.to_dict())
    else:
        print(f"rollout {rollout.id} is {rollout.state}")
    return 0


def _model_version(text: str) -> tuple[str, str]:
    model, sep, version = text.partition(":")
    if not sep or not model or not version:
        raise InvalidRequest(f"{text!r} is not MODEL:VERSION (like digits-edge:1.1.0)")
    return model, version


def _duration(flag: str, text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest(f"{flag}: {exc}") from None


def _share(rollout: Rollout, index: int) -> str:
    upto = sum(len(w.device_ids) for w in rollout.waves[: index + 1])
    return f"{100 * upto / max(1, len(rollout.devices)):.0f}%"


def _ids(device_ids: list[str], shown: int = 3) -> str:
    more = len(device_ids) - shown
    return ", ".join(device_ids[:shown]) + (f" (+{more})" if more > 0 else "")
