"""``cloud-hub ota init-keys|publish``: the hub's signed update repository (TUF).

::

    cloud-hub ota init-keys --root-key-dir /media/usb/edgeloop-root
    cloud-hub ota publish digits-edge --version 1.1.0 --format onnx-int8 \\
        --profiles x86-64-cpu,raspberry-pi-4 --golden golden.npz

``init-keys`` writes the offline root key into its own folder (not the data directory),
the online keys into ``<data_dir>/tuf/keys`` and signs version 1 of every role; move the
root key away afterwards. ``publish`` signs a registered model version as a target whose
custom metadata carries model, version, format, profiles and the health check; the golden
file is an ``.npz`` with arrays named ``inputs/<tensor>`` and ``outputs/<tensor>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ._common import add_json_flag, open_registry, print_json, settings_from, show_usage


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    ota = commands.add_parser(
        "ota", parents=[common], help="the signed update repository (TUF) devices update from"
    )
    sub = ota.add_subparsers(title="ota commands", metavar="COMMAND")
    init = sub.add_parser(
        "init-keys",
        parents=[common],
        help="make the root and online keys and sign the first metadata",
        description="Write a new Ed25519 root key into DIR (keep it offline: the hub never "
        "reads it again), the online targets/snapshot/timestamp keys into the data "
        "directory, and sign version 1 of the repository's metadata.",
    )
    init.add_argument("--root-key-dir", required=True, metavar="DIR", help="outside the data dir")
    init.set_defaults(handler=_init_keys)
    publish = sub.add_parser(
        "publish",
        parents=[common],
        help="sign a registered model version as an update target",
        description="Publish the artifact of model NAME version V in format F as the target "
        "models/NAME/V/<file name>, with the device profiles it fits (none: every profile) "
        "and, from --golden, the health check devices run before switching to it.",
    )
    publish.add_argument("name", metavar="NAME")
    publish.add_argument("--version", required=True)
    publish.add_argument("--format", required=True, help="onnx-fp32, onnx-int8, tflite-int8...")
    publish.add_argument("--profiles", default="", help="comma-separated device profiles")
    publish.add_argument(
        "--golden", metavar="FILE.npz", help="arrays inputs/<tensor> and outputs/<tensor>"
    )
    publish.add_argument("--atol", type=float, default=0.05, help="output tolerance (0.05)")
    publish.add_argument(
        "--latency-budget-ms", type=float, default=50.0, help="p95 budget of the check (50)"
    )
    add_json_flag(publish)
    publish.set_defaults(handler=_publish)
    show_usage(ota)


def _init_keys(args: argparse.Namespace) -> int:
    from ..ota import TufRepository

    settings = settings_from(args)
    root_key_dir = Path(args.root_key_dir).expanduser().absolute()
    if root_key_dir.is_relative_to(settings.data_dir):
        raise InvalidRequest(
            f"--root-key-dir {root_key_dir} is inside the hub's data directory "
            f"{settings.data_dir}: the root key must be kept apart (and offline)"
        )
    repo = TufRepository.for_data_dir(settings.data_dir)
    root_key = repo.init_keys(root_key_dir)
    repo.create(root_key_dir)
    print(f"signed a new TUF repository in {repo.root_dir}")
    print(f"root key: {root_key} (move it offline; the hub does not need it to publish)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from ..ota import TufRepository, health_custom, target_path_for

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    inputs, outputs = _golden(Path(args.golden)) if args.golden else ({}, {})
    with open_registry(args) as registry:
        version = registry.model_version(args.name, args.version, args.format)
        artifact = registry.artifact_file(version.sha256)
    custom = health_custom(
        model=version.model,
        version=version.version,
        format=version.format,
        profiles=profiles,
        inputs=inputs or None,
        outputs=outputs or None,
        atol=args.atol,
        latency_budget_ms=args.latency_budget_ms,
    )
    repo = TufRepository.for_data_dir(settings_from(args).data_dir).load()
    path = target_path_for(version.model, version.version, version.filename)
    info = repo.publish_target(path, artifact, custom)
    if args.json:
        print_json(
            {
                "target_path": info.path,
                "length": info.length,
                "sha256": info.sha256,
                "targets_version": info.targets_version,
                "custom": info.custom,
            }
        )
        return 0
    print(
        f"published {info.path} ({info.length} bytes, sha256 {info.sha256[:12]}) "
        f"in targets version {info.targets_version}"
    )
    return 0


def _golden(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            named = {key: arrays[key] for key in arrays.files}
    except FileNotFoundError:
        raise InvalidRequest(f"golden file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"golden file {path} is not a readable .npz ({exc})") from exc
    inputs = {k.removeprefix("inputs/"): v for k, v in named.items() if k.startswith("inputs/")}
    outputs = {k.removeprefix("outputs/"): v for k, v in named.items() if k.startswith("outputs/")}
    if not inputs or not outputs or len(inputs) + len(outputs) != len(named):
        raise InvalidRequest(
            f"golden file {path} must hold only arrays named inputs/<tensor> and "
            f"outputs/<tensor>, at least one of each (found {sorted(named)})"
        )
    return inputs, outputs
