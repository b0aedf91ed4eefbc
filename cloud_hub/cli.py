"""``cloud-hub``: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.cli import EXIT_USAGE, common_options, run_handler
from edge_agent.errors import EdgeAgentError

from .commands import add_commands, add_hub_options
from .errors import HubError
from .serve import add_parser as add_serve_parser

PROG = "cloud-hub"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    return run_handler(PROG, handler, args, expected=(HubError, EdgeAgentError))


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    add_hub_options(common)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="edgeloop cloud hub: fleet registry, offload, retraining and model updates.",
        parents=[common],
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_models(commands, common)
    add_commands(commands, common)
    add_serve_parser(commands, common)
    return parser


def _add_models(commands: Any, common: argparse.ArgumentParser) -> None:
    models = commands.add_parser(
        "models", parents=[common], help="build and inspect reference models"
    )
    sub = models.add_subparsers(title="model commands", metavar="COMMAND")
    build = sub.add_parser(
        "build-reference",
        parents=[common],
        help="train and export the reference models from bundled data",
        description="Build digits-edge (ONNX fp32, ONNX int8 QDQ, TFLite int8), digits-cloud "
        "(ONNX fp32) and mobilenetv2-speed (random weights, for speed only) from "
        "scikit-learn's bundled digits, seeded, with a model card beside each artifact. "
        "Needs the training extra: pip install 'edgeloop[train]'. Takes about a minute.",
    )
    build.add_argument("--out", required=True, metavar="DIR", help="where to write the models")
    build.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    build.add_argument(
        "--models",
        metavar="NAMES",
        help="comma-separated subset (digits-edge,digits-cloud,mobilenetv2-speed)",
    )
    build.set_defaults(handler=_build_reference)
    models.set_defaults(handler=lambda _args: _usage(models))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _build_reference(args: argparse.Namespace) -> int:
    from .reference import MODEL_NAMES, build_reference

    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    report = build_reference(args.out, seed=args.seed, models=names or MODEL_NAMES)
    print(report.table())
    print(f"\nwrote {len(report.artifacts)} artifacts and their model cards under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
