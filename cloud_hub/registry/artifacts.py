"""Artifacts: model files stored once, by the sha256 of their bytes.

Layout under the store's root (``<data_dir>/artifacts``)::

    sha256/ab/abcdef0123...    the file whose sha256 is abcdef0123...
    tmp/                       files being written (same file system, so rename is atomic)

A file is copied into ``tmp/`` while it is hashed, fsynced, then renamed to its address
and the folder fsynced: a crash leaves either nothing or the whole file, never a partial
file under a real address. The same bytes stored twice land on the same path once. The
database's ``artifacts`` table records the size and the path relative to the root, so
the data directory can move.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import InvalidRequest, NotFound
from ._view import View

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Artifact(View):
    sha256: str
    size: int
    path: str  # relative to the store's root
    created_at: datetime


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size: int
    relative_path: str
    created: bool  # False when the same bytes were already stored


class ArtifactStore:
    """Content-addressed files under ``root``. Safe for several threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        return self.root / self.relative_path(sha256)

    @staticmethod
    def relative_path(sha256: str) -> str:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidRequest(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        return f"sha256/{sha256[:2]}/{sha256}"

    def put_file(self, source: Path) -> StoredFile:
        """Store the file at ``source``; its bytes are read once, hashed while copied."""
        try:
            handle = open(source, "rb")  # noqa: SIM115 (closed below, errors translated)
        except FileNotFoundError:
            raise InvalidRequest(f"artifact {source} does not exist") from None
        except IsADirectoryError:
            raise InvalidRequest(f"artifact {source} is a folder, not a file") from None
        except OSError as exc:
            raise InvalidRequest(f"artifact {source} cannot be read ({exc})") from exc
        with handle:
            return self.put_stream(handle)

    def put_bytes(self, data: bytes) -> StoredFile:
        with self._temp_file() as (tmp, out):
            out.write(data)
            return self._commit(tmp, out, hashlib.sha256(data).hexdigest(), len(data))

    def put_stream(self, stream: BinaryIO) -> StoredFile:
        digest = hashlib.sha256()
        size = 0
        with self._temp_file() as (tmp, out):
            for block in iter(lambda: stream.read(_BLOCK), b""):
                digest.update(block)
                out.write(block)
                size += len(block)
            return self._commit(tmp, out, digest.hexdigest(), size)

    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self.path_for(sha256), "rb")
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is not in the store at {self.root}") from None

    def verify(self, sha256: str) -> bool:
        """True when the stored file still hashes to its address."""
        digest = hashlib.sha256()
        with self.open(sha256) as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
        return digest.hexdigest() == sha256

    @contextmanager
    def _temp_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                yield tmp, out
        finally:
            tmp.unlink(missing_ok=True)  # gone already when it was committed

    def _commit(self, tmp: Path, out: BinaryIO, sha256: str, size: int) -> StoredFile:
        relative = self.relative_path(sha256)
        final = self.root / relative
        if final.exists() and final.stat().st_size == size:
            return StoredFile(sha256, size, relative, created=False)
        out.flush()
        os.fsync(out.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return StoredFile(sha256, size, relative, created=True)


def record_artifact(session: Session, stored: StoredFile, *, now: datetime) -> orm.Artifact:
    """The ``artifacts`` row for a stored file, added if it is new."""
    row = session.get(orm.Artifact, stored.sha256)
    if row is None:
        row = orm.Artifact(
            sha256=stored.sha256, size=stored.size, path=stored.relative_path, created_at=now
        )
        session.add(row)
        session.flush()
    return row


def get_artifact(session: Session, sha256: str) -> Artifact:
    row = session.get(orm.Artifact, sha256)
    if row is None:
        raise NotFound(f"artifact {sha256} does not exist")
    return view(row)


def view(row: orm.Artifact) -> Artifact:
    return Artifact(sha256=row.sha256, size=row.size, path=row.path, created_at=row.created_at)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
