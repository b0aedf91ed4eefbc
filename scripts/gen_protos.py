"""Regenerate the committed protobuf/gRPC modules in edge_agent/wire from the sources in protos/.

    python scripts/gen_protos.py          # rewrite edge_agent/wire's generated files
    python scripts/gen_protos.py --check  # exit 1, listing the files that would change

Runs ``grpc_tools.protoc`` (python_out, pyi_out, grpc_python_out) into a scratch folder, then
post-processes what it wrote so that every module lives flat in the ``edge_agent.wire`` package:

- each proto file gets the module stem named in ``MODULES`` (``inference/grpc_service.proto`` ->
  ``inference_pb2``, ``inference_pb2_grpc``), and protoc's absolute imports of our own modules
  (``from inference import grpc_service_pb2``) become package-relative (``from . import
  inference_pb2``);
- the ``*_pb2`` modules register their descriptors in the private pool of ``edge_agent.wire._pool``
  instead of protobuf's process-wide default pool. Triton's client registers its own
  ``inference.*`` messages in the default pool, and a second copy there fails at import.

Only protos/ is on protoc's include path, so a proto cannot import Google's well-known types
(they would land in the default pool, which ours cannot see); use plain scalars instead.

The output depends only on the sources and the grpcio-tools version, so a test can check that
the committed files are what this script produces.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
WIRE_DIR = ROOT / "edge_agent" / "wire"
WIRE_PACKAGE = "edge_agent.wire"

# Every proto file under protos/ (path relative to it) -> module stem in edge_agent/wire.
MODULES: dict[str, str] = {
    "inference/grpc_service.proto": "inference",
    "edgeloop/v1/enrollment.proto": "enrollment",
    "edgeloop/v1/ota.proto": "ota",
}

_GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
_POOL_FILE = "_pool.py"
_POOL_SOURCE = '''\
"""The descriptor pool behind edge_agent.wire's generated modules.

Written by scripts/gen_protos.py; do not edit. Our messages are registered here rather than in
protobuf's process-wide default pool, so they can be imported beside another copy of the same
protocol: tritonclient puts Triton's own ``inference.*`` messages in the default pool, and a
second registration of those names there fails at import time.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

_DEFAULT_POOL_ADD = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_ADD = "_POOL.AddSerializedFile("
_BUILDER_IMPORT = "from google.protobuf.internal import builder as _builder\n"
_POOL_IMPORT = "from ._pool import POOL as _POOL\n"
# An import of a generated module that is not package-relative, left after the rewrite.
_ABSOLUTE_PB2_IMPORT = re.compile(
    r"^\s*(?:import\s+[\w.]*_pb2\b|from\s+(?!\.|google\.protobuf\b)[\w.]+\s+import\s+\w+_pb2\b)",
    re.MULTILINE,
)


class GenerationError(RuntimeError):
    """protoc failed, or its output did not look the way the post-processing expects."""


def _discover_protos() -> list[str]:
    found = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    unnamed = [p for p in found if p not in MODULES]
    missing = [p for p in MODULES if p not in found]
    if unnamed or missing:
        raise GenerationError(
            f"protos/ and MODULES in {Path(__file__).name} disagree: "
            f"not in MODULES {unnamed}, not on disk {missing}"
        )
    stems = list(MODULES.values())
    if len(set(stems)) != len(stems):
        raise GenerationError(f"module stems must be unique: {stems}")
    return found


def _run_protoc(protos: Sequence[str], out_dir: Path) -> None:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_ROOT / p) for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise GenerationError(f"protoc exited with {rc} (its messages are above)")


def _replace_once(text: str, old: str, new: str, where: str) -> str:
    count = text.count(old)
    if count != 1:
        raise GenerationError(f"{where}: expected {old!r} once, found it {count} times")
    return text.replace(old, new)


def _rewrite(text: str, kind: str, where: str) -> str:
    """Make one generated file importable as part of edge_agent.wire."""
    for proto, stem in MODULES.items():
        package, _, name = proto.removesuffix(".proto").rpartition("/")
        old_module = f"{name}_pb2"
        new_module = f"{stem}_pb2"
        if package:
            old_import = f"from {package.replace('/', '.')} import {old_module} as "
        else:
            old_import = f"import {old_module} as "
        text = text.replace(old_import, f"from . import {new_module} as ")
        dotted = f"{package.replace('/', '.')}.{old_module}" if package else old_module
        text = text.replace(f"'{dotted}'", f"'{WIRE_PACKAGE}.{new_module}'")
        old_path = proto.removesuffix(".proto")
        new_path = f"{WIRE_PACKAGE.replace('.', '/')}/{stem}"
        text = text.replace(f"{old_path}_pb2_grpc.py", f"{new_path}_pb2_grpc.py")
    if kind == "_pb2.py":
        text = _replace_once(text, _DEFAULT_POOL_ADD, _PRIVATE_POOL_ADD, where)
        text = _replace_once(text, _BUILDER_IMPORT, _BUILDER_IMPORT + _POOL_IMPORT, where)
    leftover = _ABSOLUTE_PB2_IMPORT.search(text)
    if leftover:
        raise GenerationError(f"{where}: absolute import left after rewrite: {leftover[0]!r}")
    return text


def generate(out_dir: Path) -> list[str]:
    """Write the generated modules for every proto into ``out_dir``; return their file names."""
    protos = _discover_protos()
    written: dict[str, str] = {_POOL_FILE: _POOL_SOURCE}
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as scratch:
        raw_dir = Path(scratch)
        _run_protoc(protos, raw_dir)
        for proto in protos:
            base = proto.removesuffix(".proto")
            for kind in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                source = raw_dir / f"{base}{kind}"
                if not source.is_file():
                    raise GenerationError(f"protoc wrote no {source.relative_to(raw_dir)}")
                name = f"{MODULES[proto]}{kind}"
                written[name] = _rewrite(source.read_text(encoding="utf-8"), kind, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in written.items():
        (out_dir / name).write_bytes(text.encode("utf-8"))
    return sorted(written)


def _committed_files(wire_dir: Path) -> set[str]:
    names = {p.name for pattern in _GENERATED_PATTERNS for p in wire_dir.glob(pattern)}
    if (wire_dir / _POOL_FILE).exists():
        names.add(_POOL_FILE)
    return names


def check(wire_dir: Path = WIRE_DIR) -> list[str]:
    """Regenerate into a scratch folder; return a line per file in ``wire_dir`` that differs."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gen_protos_check_") as scratch:
        fresh_dir = Path(scratch)
        fresh = set(generate(fresh_dir))
        committed = _committed_files(wire_dir)
        for name in sorted(fresh | committed):
            if name not in committed:
                problems.append(f"missing: {name}")
            elif name not in fresh:
                problems.append(f"stale (no proto makes it): {name}")
            elif (fresh_dir / name).read_bytes() != (wire_dir / name).read_bytes():
                problems.append(f"differs: {name}")
    return problems


def write(wire_dir: Path = WIRE_DIR) -> list[str]:
    """Regenerate into ``wire_dir``, removing stale generated files; return what changed."""
    changed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gen_protos_write_") as scratch:
        fresh_dir = Path(scratch)
        fresh = generate(fresh_dir)
        wire_dir.mkdir(parents=True, exist_ok=True)
        for name in fresh:
            data = (fresh_dir / name).read_bytes()
            target = wire_dir / name
            if not target.exists() or target.read_bytes() != data:
                target.write_bytes(data)
                changed.append(f"wrote: {name}")
        for name in sorted(_committed_files(wire_dir) - set(fresh)):
            (wire_dir / name).unlink()
            changed.append(f"removed: {name}")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder and exit 1 if the committed files differ",
    )
    args = parser.parse_args(argv)
    try:
        lines = check() if args.check else write()
    except GenerationError as exc:
        print(f"gen_protos: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if args.check and lines:
        print("edge_agent/wire is out of date: run python scripts/gen_protos.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
