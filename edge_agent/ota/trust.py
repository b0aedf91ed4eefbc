"""TUF on the device: pin the hub's root at enrollment, then verify every update against it.

::

    pin_root(state_dir, response.tuf_root)              # at enrollment (0600)
    updater = TrustedUpdater(state_dir, hub.fetcher())  # fetch(path, max_length) -> chunks
    updater.refresh()                                   # root -> timestamp -> snapshot -> targets
    target = updater.target_info("models/digits-edge/1.1.0/digits-edge-int8.onnx")
    ...download target.length bytes into the inactive slot...
    updater.verify_file(target, staged_file)            # before anything parses it

python-tuf's ``Updater`` does the checking: signatures and thresholds from the pinned root,
expiry (freeze), version rollback, snapshot/timestamp consistency (mix-and-match) and a
length cap on every download (endless data). This module gives it a fetcher that speaks
our transport and turns its errors into :mod:`edge_agent.errors`: anything that fails a
check is :class:`~edge_agent.errors.IntegrityError`; a peer that cannot be reached stays
the transport's :class:`~edge_agent.errors.TransportError`.

The fetch function takes a path in the hub's repository (``metadata/timestamp.json``,
``metadata/2.root.json``, ``targets/models/...``) and the most bytes the device will accept
(None when not known), and yields the bytes. A file the hub does not have must raise
``FileNotFoundError`` or an error whose ``code`` is ``"NOT_FOUND"`` (the transport's
``NotOnHub``): that is how the updater learns no newer root exists.

python-tuf is imported when an update is checked, never at agent start-up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError, EdgeAgentError, IntegrityError, TransportError

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater

__all__ = [
    "METADATA_DIR",
    "Fetch",
    "TrustedUpdater",
    "VerifiedTarget",
    "pin_root",
    "verify_file",
]

Fetch = Callable[[str, "int | None"], Iterator[bytes]]

METADATA_DIR = Path("tuf") / "metadata"
MAX_ROOT_BYTES = 512 * 1024
# Not a real address: the fetcher strips it and hands the repository path to ``fetch``.
_BASE = "edgeloop-hub:///"


@dataclass(frozen=True)
class VerifiedTarget:
    """A target as signed metadata describes it; ``custom`` is the target's custom dict."""

    path: str
    length: int
    sha256: str
    custom: Mapping[str, Any] = field(default_factory=dict)

    @property
    def edgeloop(self) -> Mapping[str, Any]:
        """``custom["edgeloop"]``: model, version, format, profiles and health (docs/ota.md)."""
        value = self.custom.get("edgeloop")
        return value if isinstance(value, Mapping) else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "length": self.length,
            "sha256": self.sha256,
            "custom": dict(self.custom),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerifiedTarget:
        """Back from :meth:`to_dict` (e.g. an install journal); re-verify files with it."""
        return cls(
            path=str(data["path"]),
            length=int(data["length"]),
            sha256=str(data["sha256"]),
            custom=dict(data.get("custom") or {}),
        )


def pin_root(state_dir: Path, root_bytes: bytes) -> Path:
    """Trust ``root_bytes`` (the hub's signed root.json) from now on; returns its path.

    The root must be valid TUF root metadata signed by its own root keys. Metadata cached
    under an earlier root is dropped: a new pin is a fresh start (re-enrollment).
    """
    if not root_bytes:
        raise IntegrityError("the hub sent no TUF root (is its update repository set up?)")
    if len(root_bytes) > MAX_ROOT_BYTES:
        raise IntegrityError(
            f"the hub's TUF root is {len(root_bytes)} bytes, over {MAX_ROOT_BYTES}"
        )
    _check_root(root_bytes)
    metadata_dir = Path(state_dir) / METADATA_DIR
    if metadata_dir.exists():
        for entry in metadata_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                for old in entry.iterdir():
                    old.unlink()
                entry.rmdir()
            else:
                entry.unlink()
    metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = metadata_dir / "root.json"
    _write_private(path, root_bytes)
    return path


def verify_file(target: VerifiedTarget, path: Path) -> None:
    """Raise IntegrityError unless ``path`` has exactly the target's signed length and hash."""
    from tuf.api import exceptions

    try:
        with open(path, "rb") as handle:
            _tuf_target(target).verify_length_and_hashes(handle)
    except exceptions.LengthOrHashMismatchError as exc:
        raise IntegrityError(
            f"{path} is not target {target.path} ({target.length} bytes, sha256 "
            f"{target.sha256}): {exc}"
        ) from exc
    except OSError as exc:
        raise IntegrityError(
            f"{path} cannot be read to verify target {target.path}: {exc}"
        ) from exc


class TrustedUpdater:
    """python-tuf's ``Updater`` over the pinned root in ``<state_dir>/tuf/metadata``.

    One :meth:`refresh` per check-in: each starts a new python-tuf updater (which can
    refresh once) over the metadata cached so far, so rollback protection carries over.
    """

    def __init__(self, state_dir: Path, fetch: Fetch) -> None:
        self.metadata_dir = Path(state_dir) / METADATA_DIR
        if not (self.metadata_dir / "root.json").exists():
            raise ConfigError(
                f"no pinned TUF root at {self.metadata_dir / 'root.json'}: enroll this device "
                "with a hub that has an update repository ('cloud-hub ota init-keys')"
            )
        self._fetch = fetch
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Fetch and verify root (rotations), timestamp, snapshot and targets."""
        self._updater = self._new_updater()
        with _translated("refreshing update metadata"):
            self._updater.refresh()

    def target_info(self, target_path: str) -> VerifiedTarget:
        """The signed description of ``target_path``; IntegrityError if it is not listed."""
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        with _translated(f"looking up target {target_path}"):
            found = self._updater.get_targetinfo(target_path)
        if found is None:
            raise IntegrityError(f"target {target_path} is not in the hub's signed targets")
        sha256 = found.hashes.get("sha256")
        if sha256 is None:
            raise IntegrityError(f"target {target_path} is signed without a sha256 hash")
        custom = found.custom if isinstance(found.custom, dict) else {}
        return VerifiedTarget(found.path, found.length, sha256, custom)

    def download(self, target: VerifiedTarget, dest: Path) -> Path:
        """Fetch the whole target into ``dest`` (capped at its length, then verified).

        A convenience without resume; the installer downloads through the transport's
        resumable ``download_to`` and calls :meth:`verify_file`.
        """
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        try:
            with _translated(f"downloading target {target.path}"):
                self._updater.download_target(_tuf_target(target), filepath=name)
            with open(name, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(name, dest)
        finally:
            Path(name).unlink(missing_ok=True)
        return dest

    verify_file = staticmethod(verify_file)

    def _new_updater(self) -> Updater:
        from tuf.ngclient import Updater, UpdaterConfig

        config = UpdaterConfig(prefix_targets_with_hash=False)
        with _translated("loading the pinned TUF root"):
            return Updater(
                str(self.metadata_dir),
                _BASE + "metadata/",
                target_base_url=_BASE + "targets/",
                fetcher=_fetcher(self._fetch),
                config=config,
                bootstrap=None,  # the root pinned at enrollment (and rotated since) anchors trust
            )


def _fetcher(fetch: Fetch) -> Any:
    """A ``tuf.ngclient.FetcherInterface`` that hands repository paths to ``fetch``."""
    from tuf.api import exceptions
    from tuf.ngclient import FetcherInterface

    class _Fetcher(FetcherInterface):
        def __init__(self) -> None:
            self._cap: int | None = None

        @contextlib.contextmanager
        def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
            self._cap = max_length  # tell the hub too; python-tuf still counts every byte
            try:
                with super().download_file(url, max_length) as handle:
                    yield handle
            finally:
                self._cap = None

        def _fetch(self, url: str) -> Iterator[bytes]:
            if not url.startswith(_BASE):
                raise exceptions.DownloadError(f"{url} is not in the hub's repository")
            return self._chunks(url.removeprefix(_BASE), self._cap)

        def _chunks(self, path: str, cap: int | None) -> Iterator[bytes]:
            try:
                yield from fetch(path, cap)
            except Exception as exc:
                if isinstance(exc, FileNotFoundError) or getattr(exc, "code", "") == "NOT_FOUND":
                    raise exceptions.DownloadHTTPError(f"{path}: not found", 404) from exc
                raise

    return _Fetcher()


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    """python-tuf's errors as ours; our own errors (from ``fetch``) pass unchanged."""
    from tuf.api import exceptions

    try:
        yield
    except EdgeAgentError:
        raise
    except exceptions.DownloadLengthMismatchError as exc:
        raise IntegrityError(
            f"{doing}: the hub sent more than the signed length allows, cut off ({exc})"
        ) from exc
    except exceptions.DownloadError as exc:
        if isinstance(exc.__cause__, EdgeAgentError):
            raise exc.__cause__ from exc
        raise TransportError(f"{doing}: {exc}") from exc
    except exceptions.RepositoryError as exc:
        raise IntegrityError(f"{doing}: {_why(exc)}: {exc}") from exc
    except OSError as exc:
        raise EdgeAgentError(f"{doing}: cannot use the TUF metadata folder: {exc}") from exc


def _why(exc: Exception) -> str:
    from tuf.api import exceptions

    if isinstance(exc, exceptions.ExpiredMetadataError):
        return "metadata expired (a stale or frozen repository)"
    if isinstance(exc, exceptions.BadVersionNumberError):
        return "wrong metadata version (rollback, or metadata of another release)"
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return "metadata not signed by the trusted keys"
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return "metadata does not match what the newer role signed (mix-and-match)"
    return "update metadata refused"


def _check_root(root_bytes: bytes) -> None:
    from tuf.api.metadata import Metadata, Root

    try:
        md = Metadata[Root].from_bytes(root_bytes)
        if not isinstance(md.signed, Root):
            raise ValueError(f"it is {md.signed.type} metadata")
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except Exception as exc:  # python-tuf raises several kinds for malformed input
        raise IntegrityError(f"the hub's TUF root cannot be trusted: {exc}") from exc


def _tuf_target(target: VerifiedTarget) -> TargetFile:
    from tuf.api.metadata import TargetFile

    return TargetFile(target.length, {"sha256": target.sha256}, target.path)


def _write_private(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp makes it 0600
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
