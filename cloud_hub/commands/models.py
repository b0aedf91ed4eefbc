"""``cloud-hub model register|list``: the model registry."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from ._common import add_json_flag, note, open_registry, print_json, print_table, show_usage


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    model = commands.add_parser(
        "model", parents=[common], help="register model versions and list them"
    )
    sub = model.add_subparsers(title="model commands", metavar="COMMAND")
    register = sub.add_parser(
        "register",
        parents=[common],
        help="register a model artifact as a version",
        description="Store the artifact content-addressed (sha256; the same bytes are "
        "stored once) and record it as version V of model NAME in format F, with its "
        "model card: by default the card beside the artifact (FILE.card.json).",
    )
    register.add_argument("name", metavar="NAME")
    register.add_argument("--version", required=True, help="the version, e.g. 3 or 2025.06.1")
    register.add_argument("--artifact", required=True, metavar="FILE", help="the model file")
    register.add_argument(
        "--format", required=True, help="onnx-fp32, onnx-int8, tflite-int8, tensorrt-engine..."
    )
    cards = register.add_mutually_exclusive_group()
    cards.add_argument("--card", metavar="CARD.json", help="the model card (default: beside FILE)")
    cards.add_argument("--no-card", action="store_true", help="register without a model card")
    add_json_flag(register)
    register.set_defaults(handler=_register)
    listing = sub.add_parser("list", parents=[common], help="list registered model versions")
    listing.add_argument("--name", help="only this model's versions")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)
    show_usage(model)


def _register(args: argparse.Namespace) -> int:
    artifact = Path(args.artifact)
    card = None if args.no_card else _card(artifact, args.card)
    with open_registry(args) as registry:
        version = registry.register_model(args.name, args.version, args.format, artifact, card=card)
    if args.json:
        print_json(version.to_dict())
        return 0
    print(
        f"registered {version.model} {version.version} ({version.format}): "
        f"sha256 {version.sha256}, {version.size} bytes"
    )
    if card is None:
        note("no model card: pass --card CARD.json, or write FILE.card.json beside the artifact")
    return 0


def _card(artifact: Path, card_file: str | None) -> dict[str, Any] | None:
    """The card as a plain dict: from ``card_file``, else the one beside the artifact."""
    from edge_agent.model_card import ModelCard, read_card

    if card_file is None:
        found = read_card(artifact)
        return dataclasses.asdict(found) if found is not None else None
    path = Path(card_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"model card {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"model card {path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"model card {path} is not a JSON object")
    return dataclasses.asdict(ModelCard.from_dict(data, str(path)))


def _list(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        versions = registry.list_models(name=args.name)
    if args.json:
        print_json([v.to_dict() for v in versions])
        return 0
    rows = [
        (
            v.model,
            v.version,
            v.format,
            _size(v.size),
            v.sha256[:12],
            _accuracy(v.card),
            v.created_at,
        )
        for v in versions
    ]
    print_table(
        ("MODEL", "VERSION", "FORMAT", "SIZE", "SHA256", "ACCURACY", "REGISTERED"),
        rows,
        empty="no models registered: cloud-hub model register NAME --version V --artifact FILE",
    )
    return 0


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    scaled = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GiB":
            break
    return f"{scaled:.1f} {unit}"


def _accuracy(card: dict[str, Any] | None) -> str:
    metrics = (card or {}).get("metrics") or {}
    if not isinstance(metrics, dict):
        return "-"
    value = metrics.get("heldout_accuracy", metrics.get("accuracy"))
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"
