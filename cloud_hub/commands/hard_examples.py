"""``cloud-hub hard-examples``: list and export what devices offloaded, with both answers."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from ._common import add_json_flag, note, open_registry, print_json, print_table, show_usage

_FILTERS_HELP = (
    "Hard examples are the inputs devices offloaded to the hub, kept with the cloud "
    "model's answer (argmax label, max score) and the device's own answer, per fleet and "
    "bounded by hard_examples_max_count / hard_examples_max_bytes (oldest evicted first). "
    "A fleet with keep_inputs off keeps the answers only (cloud-hub fleet set NAME "
    "--no-keep-inputs)."
)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "hard-examples",
        parents=[common],
        help="list and export offloaded inputs with the cloud's and the edge's answers",
        description=_FILTERS_HELP,
    )
    sub = group.add_subparsers(title="hard-example commands", metavar="COMMAND")
    listing = sub.add_parser(
        "list",
        parents=[common],
        help="the newest hard examples, newest first",
        description="The newest hard examples (without their inputs), newest first. "
        "Page with --before ID (the smallest ID shown).",
    )
    _add_filters(listing)
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)
    export = sub.add_parser(
        "export",
        parents=[common],
        help="write hard examples with their inputs to an .npz, for retraining",
        description="Write the newest examples that kept their inputs, oldest first, to an "
        ".npz: x_<input> (stacked inputs), cloud_label and edge_label (-1: none), "
        "cloud_score, edge_score, agreed, id, device_id, model_version, received_at. "
        "Load it with numpy.load(FILE). One model at a time: filter with --model.",
    )
    export.add_argument("--out", required=True, metavar="FILE.npz", help="where to write it")
    _add_filters(export)
    export.add_argument(
        "--limit", type=int, default=10_000, help="at most this many examples (default 10000)"
    )
    add_json_flag(export)
    export.set_defaults(handler=_export)
    show_usage(group)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", metavar="F", help="only this fleet's examples")
    parser.add_argument("--model", metavar="M", help="only this model's examples")
    parser.add_argument("--before", type=int, metavar="ID", help="only ids below this one")


def _list(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        found = registry.list_hard_examples(
            fleet=args.fleet, model=args.model, limit=args.limit, before_id=args.before
        )
        total = registry.count_hard_examples(fleet=args.fleet, model=args.model)
    if args.json:
        print_json([example.to_dict() for example in found])
        return 0
    rows = [
        (
            e.id,
            e.received_at,
            e.fleet,
            e.device_id,
            f"{e.model}@{e.model_version}",
            _answer(e.cloud_label, e.cloud_score),
            _answer(e.edge_label, e.edge_score),
            "-" if e.agreed is None else ("yes" if e.agreed else "no"),
            e.input_bytes if e.has_inputs else "-",
        )
        for e in found
    ]
    print_table(
        ("ID", "RECEIVED", "FLEET", "DEVICE", "MODEL", "CLOUD", "EDGE", "AGREED", "INPUT BYTES"),
        rows,
        empty="no hard examples yet (the offload server records them as devices offload)",
    )
    if found:
        note(f"{len(found)} of {total} shown")
    return 0


def _export(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        export = registry.export_hard_examples(
            fleet=args.fleet, model=args.model, limit=args.limit, before_id=args.before
        )
    out = Path(args.out)
    _write(out, export.data)
    if args.json:
        print_json(
            {
                "out": str(out),
                "count": export.count,
                "skipped": export.skipped,
                "model": export.model,
                "inputs": list(export.input_names),
                "bytes": len(export.data),
            }
        )
    else:
        print(f"wrote {export.count} hard examples to {out} ({len(export.data)} bytes)")
        if export.skipped:
            note(f"{export.skipped} examples left out: their inputs were not one sample each")
    return 0


def _answer(label: int | None, score: float | None) -> str:
    if label is None:
        return "-"
    return f"{label} ({score:.2f})" if score is not None else str(label)


def _write(path: Path, data: bytes) -> None:
    """tempfile + fsync + os.replace, so a reader never sees half a file."""
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
