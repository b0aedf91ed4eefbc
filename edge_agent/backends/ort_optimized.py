"""ONNX Runtime's graph optimizations, done once per model and device, in another process.

Creating a session with every graph optimization on holds the Python GIL for the whole
optimization pass (about 6 ms for the int8 digits model here, far more for a large one).
In the agent that is a stall of every local request while an update loads beside the
running model. ONNX Runtime can save the optimized graph ("offline mode"); a session
created from that file with optimizations off starts in a fraction of the time
(1.8 ms instead of 6 ms for the int8 digits model).

So, when the backend has a cache directory and runs on the CPU provider only:

* the optimized graph is kept under ``CACHE/ort-optimized/``, named by the model's
  SHA-256, ONNX Runtime's version and the optimization level, so a changed model or an
  upgraded runtime never reuses a stale file;
* when it is missing, a child process at the lowest CPU priority writes it
  (``python -m edge_agent.backends.ort_optimized MODEL OUT``); the child shares no GIL
  with the agent, and its file lands with an atomic rename;
* if that fails for any reason the backend loads the original model as before, and says
  why in the log.

The saved graph may use kernels of this CPU, which is why it lives in the device's own
cache and is never shipped. GPU providers optimize for their own device at load time, so
they are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import onnxruntime as ort

_LOG = logging.getLogger(__name__)

FOLDER = "ort-optimized"
#: A child that takes longer than this is killed and the model loads unoptimized.
OPTIMIZE_TIMEOUT_S = 300.0
_LOWEST_PRIORITY = 19
_CHUNK = 1 << 20
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_MAX = 64


def cached_path(model: Path, cache_dir: Path) -> Path:
    """Where the optimized graph of ``model`` is kept (it may not exist yet)."""
    return cache_dir / FOLDER / f"{_content_digest(model)[:32]}-ort{ort.__version__}-all.onnx"


def _content_digest(model: Path) -> str:
    """SHA-256 of the file, read once per (inode, size, mtime): a big model is hashed once,
    not at every load (an update writes a new file, so it gets a new key)."""
    stat = model.stat()
    key = (str(model.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with model.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    found = digest.hexdigest()
    with _DIGESTS_LOCK:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.pop(next(iter(_DIGESTS)))
        _DIGESTS[key] = found
    return found


def optimized_model(model: Path, cache_dir: Path) -> Path | None:
    """The optimized graph of ``model``, made in a child process if needed; None if not."""
    try:
        target = cached_path(model, cache_dir)
    except OSError as exc:
        _LOG.warning("%s: cannot read it to look up its optimized graph: %s", model, exc)
        return None
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _optimize_in_child(model, target)
    except (OSError, subprocess.SubprocessError) as exc:
        _LOG.warning("%s: graph optimization ahead of load failed (%s); loading as is", model, exc)
        return None
    return target if target.is_file() else None


def _optimize_in_child(model: Path, target: Path) -> None:
    command = [sys.executable, "-m", __name__, str(model), str(target)]
    child = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    with contextlib.suppress(OSError):  # it may have finished already; priority is a courtesy
        os.setpriority(os.PRIO_PROCESS, child.pid, _LOWEST_PRIORITY)
    try:
        _, err = child.communicate(timeout=OPTIMIZE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise
    if child.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise subprocess.SubprocessError(
            f"exit status {child.returncode}: {lines[-1] if lines else 'no message'}"
        )


def write_optimized(model: Path, target: Path) -> None:
    """Optimize ``model`` with every CPU graph optimization and save it atomically."""
    fd, temp = tempfile.mkstemp(prefix=".optimizing-", suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = temp
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m edge_agent.backends.ort_optimized MODEL OUT", file=sys.stderr)
        return 2
    write_optimized(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
