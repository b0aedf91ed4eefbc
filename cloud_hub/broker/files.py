"""Replacing the broker's files atomically, so Mosquitto never reads half of one.

A new file is written beside the old one, flushed to disk, given the old file's mode and
group (an operator who once ran ``chgrp mosquitto`` on it keeps that), renamed over it,
and the directory is flushed so the rename survives a crash. A new file gets mode 0640:
readable by the broker through the group, never by everyone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

NEW_FILE_MODE = 0o640


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def replace_file(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically; False (and nothing written) if it already holds it."""
    if read_text(path) == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    mode, gid = _mode_and_group(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if gid is not None:
            _set_group(fd, gid, path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return True


def _mode_and_group(path: Path) -> tuple[int, int | None]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return NEW_FILE_MODE, None
    return stat.S_IMODE(info.st_mode), info.st_gid


def _set_group(fd: int, gid: int, path: Path) -> None:
    if gid == os.getegid():
        return
    try:
        os.fchown(fd, -1, gid)
    except PermissionError:
        log.warning("cannot keep group %d on %s (the hub is not in it); check its group", gid, path)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse to open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
