"""The hub's TUF repository: signed metadata that says which model artifacts devices may install.

Layout under ``root_dir`` (``<data_dir>/tuf``)::

    metadata/1.root.json   root, signed once by the OFFLINE root key (N.root.json on rotation)
    metadata/root.json     the newest root (what enrollment hands to devices)
    metadata/targets.json  every published artifact: length, sha256 and custom.edgeloop
    metadata/snapshot.json the version, length and hash of targets.json
    metadata/timestamp.json the version, length and hash of snapshot.json
    keys/<role>.pem        the ONLINE keys (targets, snapshot, timestamp), Ed25519, 0600
    targets/<target path>  the artifact's bytes (a hard link into the artifact store)

The root key lives in a folder of its own (``init_keys(root_key_dir)``), meant to be moved
offline: after :meth:`TufRepository.create` the repository never reads it again. Consistent
snapshots are off, so devices ask for plain names. Every publish bumps targets -> snapshot ->
timestamp; every file is written tempfile + fsync + ``os.replace``, and writers in several
threads or processes take one lock (``flock`` on ``.lock``). The clock is passed in so expiry
(freeze) is testable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Conflict, DependencyMissing, HubConfigError, InvalidRequest, NotFound

if TYPE_CHECKING:  # python-tuf loads only when the repository is used
    from securesystemslib.signer import Signer
    from tuf.api.metadata import Metadata, Signed

__all__ = [
    "ONLINE_ROLES",
    "ROOT_KEY_FILE",
    "ExpirySettings",
    "TargetInfo",
    "TufRepository",
    "health_custom",
    "target_path_for",
]

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
ROOT_KEY_FILE = "root.pem"
MAX_TARGET_PATH_CHARS = 255
MAX_HEALTH_JSON_BYTES = 256 * 1024
_TARGET_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*")
_METADATA_NAME = re.compile(r"(root|targets|snapshot|timestamp|[1-9][0-9]{0,8}\.root)\.json")

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ExpirySettings:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def for_role(self, role: str) -> timedelta:
        lifetime: timedelta = getattr(self, role)
        return lifetime


@dataclass(frozen=True)
class TargetInfo:
    """A published target as the signed targets metadata describes it."""

    path: str
    length: int
    sha256: str
    custom: dict[str, Any] = field(default_factory=dict)
    targets_version: int = 0


def target_path_for(model: str, version: str, filename: str) -> str:
    """The target path of a model artifact: ``models/<name>/<version>/<file name>``."""
    return _check_target_path(f"models/{model}/{version}/{filename}")


def health_custom(
    *,
    model: str,
    version: str,
    format: str,
    profiles: Sequence[str] = (),
    inputs: Mapping[str, np.ndarray] | None = None,
    outputs: Mapping[str, np.ndarray] | None = None,
    atol: float = 0.05,
    latency_budget_ms: float = 50.0,
) -> dict[str, Any]:
    """The target's ``custom`` dict (docs/ota.md): ``{"edgeloop": {...}}``.

    ``profiles`` empty means the artifact fits every profile. The health check (golden
    ``inputs`` and the ``outputs`` they must give) is included when inputs are given.
    Signed metadata is canonical JSON, which has no floats: float tensor values, ``atol``
    and ``latency_budget_ms`` are decimal strings (``"0.05"``), exact for their dtype.
    """
    edgeloop: dict[str, Any] = {
        "model": model,
        "version": version,
        "format": format,
        "profiles": sorted(set(profiles)),
    }
    if inputs:
        if not outputs:
            raise InvalidRequest("a health check needs the expected outputs of its inputs")
        if atol < 0 or latency_budget_ms <= 0:
            raise InvalidRequest(
                f"health check: atol {atol} must be >= 0 and latency budget "
                f"{latency_budget_ms} ms > 0"
            )
        health = {
            "inputs": {name: _tensor_json(name, a) for name, a in inputs.items()},
            "outputs": {name: _tensor_json(name, a) for name, a in outputs.items()},
            "atol": repr(float(atol)),
            "latency_budget_ms": repr(float(latency_budget_ms)),
        }
        size = len(json.dumps(health))
        if size > MAX_HEALTH_JSON_BYTES:
            raise InvalidRequest(
                f"the health check's golden data is {size} bytes of JSON, more than "
                f"{MAX_HEALTH_JSON_BYTES} (it travels in signed metadata: use fewer inputs)"
            )
        edgeloop["health"] = health
    return {"edgeloop": edgeloop}


def _tensor_json(name: str, array: np.ndarray) -> dict[str, Any]:
    from edge_agent.errors import InputError
    from edge_agent.tensors import datatype_name

    value = np.asarray(array)
    try:
        datatype = datatype_name(value.dtype)
    except InputError as exc:
        raise InvalidRequest(f"health check tensor {name!r}: {exc}") from None
    if value.dtype.kind == "f":  # canonical JSON has no floats: shortest round-trip decimals
        data: list[Any] = [str(v) for v in value.ravel()]
    else:
        data = value.ravel().tolist()
    return {"shape": list(value.shape), "datatype": datatype, "data": data}


class TufRepository:
    """The hub's TUF repository under ``root_dir``; see the module docstring."""

    def __init__(
        self,
        root_dir: Path,
        *,
        expiry: ExpirySettings | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        self.root_dir = Path(root_dir)
        self.metadata_dir = self.root_dir / "metadata"
        self.keys_dir = self.root_dir / "keys"
        self.targets_dir = self.root_dir / "targets"
        self.expiry = expiry or ExpirySettings()
        self._clock = clock
        self._lock = threading.Lock()
        self._signers: dict[str, Signer] = {}

    @classmethod
    def for_data_dir(cls, data_dir: Path, **kwargs: Any) -> TufRepository:
        """The repository of a hub whose data directory is ``data_dir``."""
        return cls(Path(data_dir) / "tuf", **kwargs)

    @property
    def exists(self) -> bool:
        """True once :meth:`create` has written the signed root."""
        return (self.metadata_dir / "root.json").is_file()

    # -- keys and creation ----------------------------------------------------------------

    def init_keys(self, root_key_dir: Path) -> Path:
        """Write a new root key into ``root_key_dir`` and the online keys into ``keys/``.

        Refuses to overwrite a key, and a root key folder inside the repository. Returns
        the root key's path (move it offline after :meth:`create`).
        """
        root_key_dir = Path(root_key_dir).absolute()
        if root_key_dir.is_relative_to(self.root_dir.absolute()):
            raise InvalidRequest(
                f"the root key folder {root_key_dir} is inside the TUF repository "
                f"{self.root_dir}: keep the root key apart (and offline)"
            )
        root_key = root_key_dir / ROOT_KEY_FILE
        wanted = [root_key, *(self.keys_dir / f"{role}.pem" for role in ONLINE_ROLES)]
        existing = [str(p) for p in wanted if p.exists()]
        if existing:
            raise Conflict(f"refusing to overwrite existing keys: {', '.join(existing)}")
        signer_type = _crypto_signer()
        for path in wanted:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_new_private(path, signer_type.generate_ed25519().private_bytes)
        return root_key

    def create(self, root_key_dir: Path) -> None:
        """Sign version 1 of every role: root with the root key, the others online."""
        from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

        if self.exists:
            raise Conflict(f"a TUF repository already exists at {self.root_dir}")
        root_signer = _load_signer(Path(root_key_dir) / ROOT_KEY_FILE)
        now = self._now()
        root = Root(expires=now + self.expiry.root, consistent_snapshot=False)
        root.add_key(root_signer.public_key, "root")
        for role in ONLINE_ROLES:
            root.add_key(self._signer(role).public_key, role)
        root_md = Metadata(root)
        root_md.sign(root_signer)
        with self._locked():
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            targets = self._sign(Metadata(Targets(expires=now)), "targets")
            snapshot = self._sign(Metadata(Snapshot(expires=now)), "snapshot", targets)
            self._sign(Metadata(Timestamp(expires=now)), "timestamp", snapshot)
            data = root_md.to_bytes()
            _write_atomic(self.metadata_dir / "1.root.json", data)
            _write_atomic(self.metadata_dir / "root.json", data)  # last: marks it created

    def load(self) -> TufRepository:
        """Check the repository is there and its online keys are the ones root trusts."""
        from tuf.api.metadata import Root

        root = self._read("root", Root).signed
        for role in ONLINE_ROLES:
            key = self._signer(role).public_key
            if key.keyid not in root.roles[role].keyids:
                raise HubConfigError(
                    f"the {role} key {self.keys_dir / (role + '.pem')} is not the one the "
                    f"signed root trusts for {role} (keys replaced without a root rotation?)"
                )
        return self

    # -- publishing -----------------------------------------------------------------------

    def publish_target(
        self, target_path: str, artifact_file: Path, custom: Mapping[str, Any]
    ) -> TargetInfo:
        """Add (or update the custom data of) a target; bumps targets, snapshot, timestamp.

        The same path with other bytes is a Conflict: a published artifact never changes.
        """
        from tuf.api.metadata import TargetFile, Targets

        target_path = _check_target_path(target_path)
        custom_dict = json.loads(json.dumps(dict(custom)))  # plain JSON, or TypeError early
        artifact_file = Path(artifact_file)
        try:
            new = TargetFile.from_file(target_path, str(artifact_file), ["sha256"])
        except OSError as exc:
            raise InvalidRequest(f"artifact {artifact_file} cannot be read ({exc})") from exc
        new.unrecognized_fields = {"custom": custom_dict}
        with self._locked():
            targets = self._read("targets", Targets)
            old = targets.signed.targets.get(target_path)
            if old is not None and old.hashes != new.hashes:
                raise Conflict(
                    f"target {target_path} is already published with other bytes "
                    f"(sha256 {old.hashes.get('sha256')}); publish a new version"
                )
            if old is not None and old.custom == custom_dict:
                return _target_info(old, targets.signed.version)
            self._link_artifact(target_path, artifact_file, new.hashes["sha256"])
            targets.signed.targets[target_path] = new
            self._sign_chain(targets)
            return _target_info(new, targets.signed.version)

    def refresh_timestamp(self) -> bool:
        """Re-sign the online roles that are past half their lifetime; True if any was.

        Call it periodically (hourly is plenty): timestamp always expires first; snapshot
        and targets are re-signed, and the chain bumped, when they come close too.
        """
        from tuf.api.metadata import Snapshot, Targets, Timestamp

        now = self._now()
        with self._locked():
            targets = self._read("targets", Targets)
            if self._expiring(targets.signed, "targets", now):
                self._sign_chain(targets)
                return True
            snapshot = self._read("snapshot", Snapshot)
            if self._expiring(snapshot.signed, "snapshot", now):
                snapshot_bytes = self._resign(snapshot, "snapshot")
                self._resign(self._read("timestamp", Timestamp), "timestamp", snapshot_bytes)
                return True
            timestamp = self._read("timestamp", Timestamp)
            if self._expiring(timestamp.signed, "timestamp", now):
                self._resign(timestamp, "timestamp")
                return True
        return False

    # -- what the Download RPC and enrollment serve ---------------------------------------

    def read_metadata(self, name: str) -> bytes:
        """The bytes of ``metadata/<name>`` (e.g. ``timestamp.json``, ``2.root.json``)."""
        if not _METADATA_NAME.fullmatch(name):
            raise NotFound(f"{name!r} is not a metadata file of this repository")
        try:
            return (self.metadata_dir / name).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"metadata/{name} does not exist in {self.root_dir}") from None

    def target_file(self, target_path: str) -> Path:
        """Where a published target's bytes are; NotFound unless the signed targets list it."""
        target_path = _check_target_path(target_path, error=NotFound)
        path = self.targets_dir / target_path
        if target_path not in self.targets() or not path.is_file():
            raise NotFound(f"target {target_path} is not published in {self.root_dir}")
        return path

    def targets(self) -> dict[str, TargetInfo]:
        """Every published target by path, as the current signed targets metadata says."""
        from tuf.api.metadata import Targets

        signed = self._read("targets", Targets).signed
        return {p: _target_info(t, signed.version) for p, t in signed.targets.items()}

    def root_json(self) -> bytes:
        """The newest signed root: what a device pins at enrollment."""
        return self.read_metadata("root.json")

    # -- internals ------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise HubConfigError("the TUF repository's clock returned a naive datetime")
        return now.astimezone(timezone.utc)

    def _expiring(self, signed: Signed, role: str, now: datetime) -> bool:
        return signed.expires - now < self.expiry.for_role(role) / 2

    def _sign_chain(self, targets: Metadata[Any]) -> None:
        from tuf.api.metadata import Snapshot, Timestamp

        targets_bytes = self._resign(targets, "targets")
        snapshot_bytes = self._resign(self._read("snapshot", Snapshot), "snapshot", targets_bytes)
        self._resign(self._read("timestamp", Timestamp), "timestamp", snapshot_bytes)

    def _resign(self, md: Metadata[Any], role: str, child: bytes | None = None) -> bytes:
        md.signed.version += 1
        return self._sign(md, role, child)

    def _sign(self, md: Metadata[Any], role: str, child: bytes | None = None) -> bytes:
        """Set expiry (and the child's version, length, hash), sign and write ``role``."""
        from tuf.api.metadata import Metadata, MetaFile

        signed = md.signed
        signed.expires = self._now() + self.expiry.for_role(role)
        if child is not None:
            child_version = Metadata.from_bytes(child).signed.version
            meta = MetaFile(
                child_version, len(child), {"sha256": hashlib.sha256(child).hexdigest()}
            )
            if role == "snapshot":
                signed.meta["targets.json"] = meta
            else:
                signed.snapshot_meta = meta
        md.sign(self._signer(role))  # replaces the old signatures
        data = md.to_bytes()
        _write_atomic(self.metadata_dir / f"{role}.json", data)
        return data

    def _read(self, role: str, kind: type[Signed]) -> Metadata[Any]:
        from tuf.api.metadata import Metadata

        path = self.metadata_dir / f"{role}.json"
        try:
            md = Metadata.from_file(str(path))
        except FileNotFoundError:
            raise NotFound(
                f"no TUF repository at {self.root_dir} ({path.name} is missing): "
                "run 'cloud-hub ota init-keys --root-key-dir DIR'"
            ) from None
        if not isinstance(md.signed, kind):
            raise HubConfigError(f"{path} holds {md.signed.type} metadata, not {role}")
        return md

    def _signer(self, role: str) -> Signer:
        signer = self._signers.get(role)
        if signer is None:
            signer = self._signers[role] = _load_signer(self.keys_dir / f"{role}.pem")
        return signer

    def _link_artifact(self, target_path: str, artifact: Path, sha256: str) -> None:
        final = self.targets_dir / target_path
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.is_file() and _sha256_file(final) == sha256:
            return
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(artifact, tmp)  # content-addressed files never change: share the bytes
        except OSError:
            shutil.copyfile(artifact, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root_dir.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.root_dir / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _target_info(target: Any, targets_version: int) -> TargetInfo:
    custom = target.custom if isinstance(target.custom, dict) else {}
    return TargetInfo(
        path=target.path,
        length=target.length,
        sha256=target.hashes["sha256"],
        custom=custom,
        targets_version=targets_version,
    )


def _check_target_path(path: str, *, error: type[Exception] = InvalidRequest) -> str:
    if len(path) > MAX_TARGET_PATH_CHARS or not _TARGET_PATH.fullmatch(path):
        raise error(
            f"{path[:80]!r} is not a target path (segments of letters, digits, '.', '_', "
            f"'+' or '-' joined by '/', at most {MAX_TARGET_PATH_CHARS} characters)"
        )
    if any(part in (".", "..") for part in path.split("/")):
        raise error(f"target path {path!r} has a '.' or '..' segment")
    return path


def _crypto_signer() -> Any:
    try:
        from securesystemslib.signer import CryptoSigner
    except ImportError as exc:  # pragma: no cover - tuf is a base dependency
        raise DependencyMissing("the TUF repository needs python-tuf: pip install tuf") from exc
    return CryptoSigner


def _load_signer(path: Path) -> Signer:
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as exc:
        raise DependencyMissing(
            "signing update metadata needs cryptography: pip install 'edgeloop[hub]'"
        ) from exc
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise NotFound(
            f"signing key {path} does not exist (run 'cloud-hub ota init-keys')"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise HubConfigError(f"signing key {path} cannot be used: {exc}") from exc
    signer: Signer = _crypto_signer()(key)
    return signer


def _write_new_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    _fsync_dir(path.parent)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
