"""``python -m bench NAME [--quick]``: run one benchmark, print its table and a JSON line.

The last line of stdout is always one JSON object: ``bench``, ``quick``, the figures and
``host``. Progress goes to stderr. An unknown name is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from . import BENCHMARKS
from ._harness import host_info

_RESERVED = frozenset({"bench", "quick", "host"})


def _listing() -> str:
    width = max(len(name) for name in BENCHMARKS)
    return "\n".join(f"  {name:<{width}}  {b.summary}" for name, b in BENCHMARKS.items())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run one edgeloop benchmark: a table on stdout, then one JSON line.",
        epilog="benchmarks:\n" + _listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="the benchmark to run")
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations: well under a minute"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser


def _fail(message: str) -> int:
    print(f"bench: {message}", file=sys.stderr)
    return 2


def _result_line(name: str, quick: bool, figures: dict[str, object]) -> str:
    clash = _RESERVED & figures.keys()
    if clash:
        raise ValueError(f"benchmark {name} returned reserved key(s) {sorted(clash)}")
    return json.dumps({"bench": name, "quick": quick, **figures, "host": host_info()})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        print(_listing())
        return 0
    if args.name is None:
        return _fail(f"no benchmark named (choose one of: {', '.join(BENCHMARKS)})")
    benchmark = BENCHMARKS.get(args.name)
    if benchmark is None:
        known = ", ".join(BENCHMARKS)
        return _fail(f"unknown benchmark {args.name!r} (choose one of: {known})")
    module = importlib.import_module(benchmark.module)
    figures: dict[str, object] = module.run(args.quick)
    sys.stdout.flush()
    print(_result_line(args.name, args.quick, figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
