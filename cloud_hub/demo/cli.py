"""The demo's command line: step 1, then step 2 unless ``--no-fleet``.

Exit status: 0 when every step that ran worked (a skipped step 2 says why and counts as
no failure), 1 when one failed, 130 when interrupted (Ctrl-C or SIGTERM). With
``--keep-running``, Ctrl-C is how the demo ends and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from .errors import DemoSkipped
from .fleet import FleetOptions, run_fleet
from .models import infer_on_each_backend, prepare_reference

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Step 1: build the reference models and run one inference on each "
        "backend here. Step 2, a fleet of one: start a hub and an MQTT broker, enroll one "
        "edge agent whose unsure answers go to the hub (threshold from edge-agent "
        "calibrate), send it held-out digits, and watch its telemetry and offloaded "
        "inputs reach the hub.",
    )
    parser.add_argument(
        "--workdir",
        default="artifacts",
        metavar="DIR",
        help="where the demo writes: DIR/reference (unless --out) and DIR/demo, emptied "
        "each run (default %(default)s)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="where the reference models go (default WORKDIR/reference)"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the models even if present")
    parser.add_argument("--no-fleet", action="store_true", help="step 1 only")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the hub and the agent up after step 2, until Ctrl-C",
    )
    parser.add_argument(
        "--broker",
        default="auto",
        metavar="auto|private|HOST:PORT",
        help="step 2's MQTT broker: auto (127.0.0.1:1883 if it takes anonymous clients, "
        "else a private mosquitto), private (always our own mosquitto, on a free port: use "
        "it when another hub shares the local broker) or a broker at HOST:PORT "
        "(default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir)
    out = Path(args.out) if args.out else workdir / "reference"
    print("step 1: the reference models, one inference per backend", flush=True)
    prepare_reference(out, rebuild=args.rebuild)
    failures = infer_on_each_backend(out)
    if args.no_fleet:
        return 1 if failures else 0
    print("\nstep 2: a fleet of one (hub, MQTT broker, one enrolled edge agent)", flush=True)
    options = FleetOptions(workdir / "demo", out, args.broker, args.keep_running)
    try:
        with _sigterm_interrupts():
            fleet_ok = run_fleet(options)
    except DemoSkipped as exc:
        print(f"  step 2 skipped: {exc}", flush=True)
        fleet_ok = True
    except KeyboardInterrupt:
        print("interrupted: everything the demo started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if fleet_ok and not failures else 1


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the demo stops what it started."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
