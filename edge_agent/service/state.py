"""The state directory: where the agent keeps its identity, spool, caches and model slots.

It is created with mode 0700. An existing one must be a directory owned by the user the
agent runs as, and writable by nobody else: a group- or world-writable state directory
would let another user swap the identity or the model, so the agent refuses to start and
says how to fix it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ConfigError

__all__ = ["prepare_state_dir"]


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` (0700) if missing and check an existing one; returns it absolute."""
    path = path.absolute()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"state directory {path}: cannot create it ({reason}): expected a directory the "
            f"agent's user (uid {os.geteuid()}) can create, or --state-dir / "
            "EDGELOOP_STATE_DIR pointing at one"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"state directory {path}: not a directory")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"state directory {path}: owned by uid {info.st_uid}, expected the agent's user "
            f"(uid {os.geteuid()}): chown it to that user"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"state directory {path}: mode {mode:04o} is group- or world-writable, "
            f"expected 0700: run chmod 700 {path}"
        )
    return path
