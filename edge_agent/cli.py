"""``edge-agent``: the device-side command line.

Every command reports failures as one line on stderr and a non-zero exit;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .enroll import add_parser as add_enroll_parser
from .errors import EdgeAgentError, InputError
from .offload.calibrate_cli import add_parser as add_calibrate_parser
from .service.commands import add_parsers as add_service_parsers

PROG = "edge-agent"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    return run_handler(PROG, handler, args)


def run_handler(
    prog: str,
    handler: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    expected: tuple[type[BaseException], ...] = (EdgeAgentError,),
) -> int:
    """Run a command, turning errors into one line (and a traceback with --debug).

    ``expected`` errors are the user's to fix and print as ``error: ...``; anything
    else is our bug and says so.
    """
    debug = bool(getattr(args, "debug", False))
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place every error is reported
        if debug:
            traceback.print_exc()
        known = isinstance(exc, expected)
        kind = "error" if known else f"internal error ({type(exc).__name__})"
        hint = "" if debug or known else " (run with --debug for the traceback)"
        print(f"{prog}: {kind}: {exc}{hint}", file=sys.stderr)
        return EXIT_ERROR if known else EXIT_INTERNAL


def common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="edgeloop edge agent: runs models on this device and talks to the hub.",
        parents=[common],
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_doctor(commands, common)
    _add_infer(commands, common)
    add_service_parsers(commands, common)
    add_enroll_parser(commands, common)
    add_calibrate_parser(commands, common)
    return parser


# -- doctor -------------------------------------------------------------------------------


def _add_doctor(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser(
        "doctor",
        parents=[common],
        help="show the detected device profile, the runtimes here and how a model would run",
        description="Detect the device profile, probe the inference runtimes and, with "
        "--model, show which backend runs the model and why the others were skipped.",
    )
    cmd.add_argument("--model", metavar="PATH", help="a model file to check")
    cmd.add_argument("--profile", help="use this profile (name or .toml) instead of detecting")
    cmd.add_argument("--backend", help="force one backend (onnxruntime, litert, tensorrt)")
    cmd.add_argument("--root", default="/", help="root directory to detect hardware under")
    cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
    cmd.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import build_report, render

    report = build_report(args.model, profile=args.profile, root=args.root, backend=args.backend)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else EXIT_ERROR


# -- infer --------------------------------------------------------------------------------


def _add_infer(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser(
        "infer",
        parents=[common],
        help="run one model on one input file and print the top classes",
        description="Load MODEL on the best backend here, run it on the array in --input "
        "(a .npy file; a missing batch dimension is added) and print the top classes, the "
        "confidence and the latency of the run.",
    )
    cmd.add_argument("model", metavar="MODEL", help="model file (.onnx, .tflite, .engine/.plan)")
    cmd.add_argument("--input", required=True, metavar="FILE.npy", help="input array")
    cmd.add_argument("--top", type=int, default=3, help="how many classes to show (default 3)")
    cmd.add_argument("--profile", help="device profile name or .toml (default: detect)")
    cmd.add_argument("--backend", help="force one backend (onnxruntime, litert, tensorrt)")
    cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
    cmd.set_defaults(handler=_infer)


def _infer(args: argparse.Namespace) -> int:
    from .engine import Engine

    batch = load_array(args.input)
    with Engine.load(args.model, profile=args.profile, backend=args.backend) as engine:
        started = time.perf_counter()
        results = engine.classify(batch, top_k=max(1, args.top))
        latency_ms = (time.perf_counter() - started) * 1000
        backend = f"{engine.backend_name} ({', '.join(engine.backend.accelerators)})"
    if args.json:
        payload = {
            "model": str(args.model),
            "backend": backend,
            "latency_ms": round(latency_ms, 3),
            "results": [r.to_dict() for r in results],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"model    {args.model}")
    print(f"backend  {backend}")
    print(f"latency  {latency_ms:.3f} ms for {len(results)} input(s)")
    for index, result in enumerate(results):
        top = "  ".join(
            f"{label} ({p:.3f})"
            for label, p in zip(result.labels, result.probabilities, strict=True)
        )
        print(f"#{index}  top: {top}  confidence {result.confidence:.3f}")
    return 0


def load_array(path: str) -> np.ndarray:
    """Read a ``.npy`` input file, with errors that name the file."""
    file = Path(path)
    try:
        value = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{file}: no such input file") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{file}: not a readable .npy array ({exc})") from exc
    if not isinstance(value, np.ndarray):
        raise InputError(f"{file}: holds several arrays; give a .npy file with one")
    return value


if __name__ == "__main__":
    sys.exit(main())
