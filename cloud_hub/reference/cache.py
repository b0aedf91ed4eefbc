"""A built set of reference models, reused while the recipe is unchanged.

Tests and benchmarks need the reference models but should build them once. The
cache key is a hash of the recipe's source files and the seed, so editing the
recipe rebuilds, and the build lands atomically (built aside, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TextIO

from .builder import build_reference

_RECIPE_FILES = ("architectures.py", "builder.py", "data.py", "exporting.py")


def recipe_hash(seed: int) -> str:
    digest = hashlib.sha256(f"seed={seed}".encode())
    here = Path(__file__).parent
    for name in _RECIPE_FILES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def default_cache_root() -> Path:
    configured = os.environ.get("EDGELOOP_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeloop"


def reference_models(
    cache_root: Path | None = None, seed: int = 0, progress: TextIO | None = None
) -> Path:
    """The folder holding all reference models for ``seed``, building it if needed."""
    root = cache_root or default_cache_root()
    target = root / f"reference-{recipe_hash(seed)}"
    if (target / "manifest.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build_reference(staging, seed=seed, progress=progress)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "manifest.json").exists():  # lost a race to nobody: real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
