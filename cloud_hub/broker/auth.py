"""Keeping Mosquitto's password and ACL files in step with the registry.

The database is the source of truth: each device credential keeps, beside its sha256,
the Mosquitto ``$7$`` hash of the same secret (``device_credentials.broker_hash``, made at
enrollment, the only moment the hub holds the plaintext). :meth:`BrokerAuth.sync` renders
both files from the devices that are not revoked, replaces them atomically when they
changed, and has the broker reload them. So the files can always be rebuilt, a failed
write or reload is repaired by the next sync (``cloud-hub broker sync`` forces one), and
several hub processes may sync: a lock file serialises them, and each renders a
committed view at least as new as any sync before it.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Database
from ..db import models as orm
from ..errors import HubConfigError, HubError, NotFound, Unavailable
from ..registry._secret import secret_matches
from ..settings import HubSettings
from .files import read_text, replace_file
from .hub_login import MqttLogin, hub_mqtt_login
from .passwords import hash_password, password_matches
from .policy import (
    BrokerDevice,
    check_prefix,
    parse_password_file,
    render_acl,
    render_password_file,
)
from .reload import BrokerReloader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    devices: int  # devices allowed on the broker
    changed: bool  # whether a file was rewritten
    reload: str | None  # how the broker was reloaded; None when nothing needed it

    def describe(self) -> str:
        files = (
            "rewrote the broker's password and ACL files"
            if self.changed
            else ("the broker's files were up to date")
        )
        reload = f"; {self.reload}" if self.reload else ""
        return f"{files} ({self.devices} device(s) allowed){reload}"


class BrokerAuth:
    """The hub's side of the broker's authentication: files from the registry, and reloads."""

    def __init__(
        self,
        *,
        password_file: Path,
        acl_file: Path,
        topic_prefix: str,
        hub: MqttLogin,
        reloader: BrokerReloader,
    ) -> None:
        if hub.password is None:
            raise HubConfigError(f"the hub's broker user {hub.username!r} needs a password")
        self.password_file = password_file
        self.acl_file = acl_file
        self.topic_prefix = check_prefix(topic_prefix)
        self.hub = hub
        self.reloader = reloader
        self._lock = threading.Lock()
        self._reload_pending = False

    @classmethod
    def from_settings(cls, settings: HubSettings) -> BrokerAuth | None:
        """The broker auth the settings describe; None when the hub does not manage it."""
        if settings.broker_password_file is None and settings.broker_acl_file is None:
            return None
        if settings.broker_password_file is None or settings.broker_acl_file is None:
            missing = (
                "broker_acl_file" if settings.broker_acl_file is None else ("broker_password_file")
            )
            raise HubConfigError(
                f"{missing} is not set: the hub manages the broker's password and ACL files "
                "together (a password file without an ACL would let any device publish as "
                "any other)"
            )
        hub = hub_mqtt_login(settings)
        assert hub is not None  # a managed broker always has a hub login
        return cls(
            password_file=settings.broker_password_file,
            acl_file=settings.broker_acl_file,
            topic_prefix=settings.mqtt_topic_prefix,
            hub=hub,
            reloader=BrokerReloader(
                pid_file=settings.broker_pid_file, command=settings.broker_reload_command
            ),
        )

    # -- at enrollment --------------------------------------------------------------------

    def record_credential(self, session: Session, device_id: str, secret: str) -> None:
        """Store the broker hash of ``secret`` on the device's credential that it opens.

        Called in the enrollment's transaction, while the plaintext is still at hand.
        """
        rows = session.scalars(
            select(orm.DeviceCredential)
            .where(orm.DeviceCredential.device_id == device_id)
            .where(orm.DeviceCredential.revoked_at.is_(None))
        ).all()
        matching = [row for row in rows if secret_matches(secret, row.secret_hash)]
        if not matching:
            raise NotFound(f"device {device_id} has no credential with this secret")
        for row in matching:
            row.broker_hash = hash_password(secret)
        session.flush()

    # -- keeping the files in step --------------------------------------------------------

    def sync(self, db: Database, *, force_reload: bool = False) -> SyncResult:
        """Rewrite the files from ``db`` if they changed, then reload the broker.

        Raises :class:`~cloud_hub.errors.Unavailable` when the reload fails; the next
        sync reloads again even if the files are unchanged by then.
        """
        with self._lock, self._file_lock():
            devices = self._allowed_devices(db)
            users = {d.device_id: d.password_hash for d in devices}
            if self.hub.username in users:
                raise HubConfigError(
                    f"the hub's broker user {self.hub.username!r} is also a device id: "
                    "set mqtt_username to another name"
                )
            users[self.hub.username] = self._hub_hash()
            changed = replace_file(
                self.acl_file, render_acl(self.topic_prefix, self.hub.username, devices)
            )
            changed = replace_file(self.password_file, render_password_file(users)) or changed
            reload = None
            if changed or self._reload_pending or force_reload:
                self._reload_pending = True
                reload = self.reloader.reload()
                self._reload_pending = False
            result = SyncResult(devices=len(devices), changed=changed, reload=reload)
        log.info("broker sync: %s", result.describe())
        return result

    def _allowed_devices(self, db: Database) -> list[BrokerDevice]:
        query = (
            select(orm.DeviceCredential.device_id, orm.Fleet.name, orm.DeviceCredential.broker_hash)
            .join(orm.Device, orm.Device.id == orm.DeviceCredential.device_id)
            .join(orm.Fleet, orm.Fleet.id == orm.Device.fleet_id)
            .where(orm.Device.revoked_at.is_(None))
            .where(orm.DeviceCredential.revoked_at.is_(None))
            .where(orm.DeviceCredential.broker_hash.is_not(None))
            .order_by(orm.DeviceCredential.created_at, orm.DeviceCredential.id)
        )
        newest: dict[str, BrokerDevice] = {}
        with db.transaction() as session:
            for device_id, fleet, broker_hash in session.execute(query):
                if broker_hash is not None:  # (the query already leaves those out)
                    newest[device_id] = BrokerDevice(device_id, fleet, broker_hash)
        return list(newest.values())

    def _hub_hash(self) -> str:
        """The hub user's hash: the one in the file while it matches (so the file stays put)."""
        assert self.hub.password is not None
        current = parse_password_file(read_text(self.password_file) or "").get(self.hub.username)
        if current is not None and password_matches(self.hub.password, current):
            return current
        return hash_password(self.hub.password)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        path = self.password_file.parent / f".{self.password_file.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def sync_broker(db: Database, settings: HubSettings, *, force_reload: bool = False) -> str:
    """Bring the broker in step with ``db`` if the hub manages it; a line saying what happened."""
    auth = BrokerAuth.from_settings(settings)
    if auth is None:
        return "the hub does not manage the broker's users (broker_password_file is not set)"
    return auth.sync(db, force_reload=force_reload).describe()


def revoke_on_broker(db: Database, settings: HubSettings, device_id: str) -> str:
    """After ``device_id`` was revoked in ``db``: drop it from the broker; a line saying so.

    Raises :class:`~cloud_hub.errors.Unavailable` naming the device and the way to finish
    when the files cannot be written or the broker cannot be reloaded.
    """
    try:
        return f"broker: {sync_broker(db, settings)}"
    except (HubError, OSError) as exc:
        raise Unavailable(
            f"device {device_id} is revoked in the registry (gRPC refuses it), but the broker "
            f"was not updated: {exc}; fix that and run 'cloud-hub broker sync'"
        ) from exc
