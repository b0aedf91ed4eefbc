"""The :class:`Registry`: the one object every transport calls (CLI, REST, gRPC, ingest).

Each method runs in a transaction of its own and returns frozen views (never ORM objects
or sessions), so callers in any thread can keep, serialise or compare what they get.
Errors are :mod:`cloud_hub.errors`; transports map them to exit codes, HTTP and gRPC
statuses. Work that must span several steps in one transaction uses the per-concept
modules (:mod:`.fleets`, :mod:`.devices`, ...) with ``registry.db.transaction()``.

The clock is passed in (``clock=``) so expiry is testable and every timestamp written by
one call is the same instant.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from ..db import Database, ensure_schema, utcnow
from ..errors import HubError, NotFound
from ..hard_examples import queries as hard_examples
from ..settings import HubSettings
from . import artifacts, devices, enrollment, fleets, models, operators, telemetry, tokens
from .artifacts import ArtifactStore
from .credentials import authenticate_device

Clock = Callable[[], datetime]


class Registry:
    """The fleet registry over one database and one artifact store."""

    def __init__(self, db: Database, store: ArtifactStore, *, clock: Clock = utcnow) -> None:
        self.db = db
        self.store = store
        self._clock = clock

    @classmethod
    def open(
        cls, settings: HubSettings, *, create_schema: bool = True, clock: Clock = utcnow
    ) -> Registry:
        """Open the database in ``settings`` and check its schema (creating it when empty)."""
        db = Database(settings.database_url)
        try:
            ensure_schema(db, create=create_schema)
        except BaseException:
            db.close()
            raise
        return cls(db, ArtifactStore(settings.artifacts_dir), clock=clock)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def now(self) -> datetime:
        moment = self._clock()
        if moment.tzinfo is None:
            raise HubError("the registry's clock returned a naive datetime; it must be UTC")
        return moment

    # -- fleets ---------------------------------------------------------------------------

    def create_fleet(self, name: str, *, keep_inputs: bool = True) -> fleets.Fleet:
        with self.db.transaction() as session:
            return fleets.create_fleet(session, name, keep_inputs=keep_inputs, now=self.now())

    def fleet(self, name: str) -> fleets.Fleet:
        with self.db.transaction() as session:
            return fleets.get_fleet(session, name)

    def update_fleet(self, name: str, *, keep_inputs: bool | None = None) -> fleets.Fleet:
        """Change a fleet's settings (None: unchanged). The hub's hard-example recorder
        applies a new ``keep_inputs`` from its next batch on; kept inputs stay."""
        with self.db.transaction() as session:
            return fleets.update_fleet(session, name, keep_inputs=keep_inputs)

    def list_fleets(self) -> list[fleets.Fleet]:
        with self.db.transaction() as session:
            return fleets.list_fleets(session)

    # -- enrollment tokens and enrollment -------------------------------------------------

    def create_enrollment_token(
        self, fleet: str, *, ttl: timedelta, uses: int
    ) -> tokens.IssuedToken:
        with self.db.transaction() as session:
            return tokens.create_enrollment_token(
                session, fleet, ttl=ttl, uses=uses, now=self.now()
            )

    def list_enrollment_tokens(self, *, fleet: str | None = None) -> list[tokens.EnrollmentToken]:
        with self.db.transaction() as session:
            return tokens.list_enrollment_tokens(session, fleet=fleet)

    def revoke_enrollment_token(self, token_id: str) -> tokens.EnrollmentToken:
        with self.db.transaction() as session:
            return tokens.revoke_enrollment_token(session, token_id, now=self.now())

    def redeem_enrollment_token(
        self,
        token: str,
        *,
        public_key_pem: str | None,
        hostname: str,
        profile: str | None = None,
        hardware: Mapping[str, Any] | None = None,
        agent_version: str | None = None,
    ) -> enrollment.Enrollment:
        """Enroll a device: a new id in the token's fleet and a credential, shown once."""
        with self.db.transaction() as session:
            return enrollment.redeem_enrollment_token(
                session,
                token,
                public_key_pem=public_key_pem,
                hostname=hostname,
                profile=profile,
                hardware=hardware,
                agent_version=agent_version,
                now=self.now(),
            )

    # -- devices --------------------------------------------------------------------------

    def device(self, device_id: str) -> devices.Device:
        with self.db.transaction() as session:
            return devices.get_device(session, device_id)

    def list_devices(
        self,
        *,
        fleet: str | None = None,
        profile: str | None = None,
        status: str | None = None,
        model_version: str | None = None,
        revoked: bool | None = None,
    ) -> list[devices.Device]:
        with self.db.transaction() as session:
            return devices.list_devices(
                session,
                fleet=fleet,
                profile=profile,
                status=status,
                model_version=model_version,
                revoked=revoked,
            )

    def revoke_device(self, device_id: str) -> devices.Device:
        with self.db.transaction() as session:
            return devices.revoke_device(session, device_id, now=self.now())

    def authenticate_device(self, device_id: str, secret: str) -> devices.Device:
        with self.db.transaction() as session:
            return authenticate_device(session, device_id, secret)

    def update_device_state(
        self,
        device_id: str,
        *,
        status: str | None = None,
        seen_at: datetime | None = None,
        boot_id: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> bool:
        with self.db.transaction() as session:
            return devices.update_device_state(
                session,
                device_id,
                status=status,
                seen_at=seen_at,
                boot_id=boot_id,
                model_name=model_name,
                model_version=model_version,
            )

    # -- operator tokens ------------------------------------------------------------------

    def create_operator_token(self, name: str) -> operators.IssuedOperatorToken:
        with self.db.transaction() as session:
            return operators.create_operator_token(session, name, now=self.now())

    def list_operator_tokens(self) -> list[operators.OperatorToken]:
        with self.db.transaction() as session:
            return operators.list_operator_tokens(session)

    def revoke_operator_token(self, token_id: str) -> operators.OperatorToken:
        with self.db.transaction() as session:
            return operators.revoke_operator_token(session, token_id, now=self.now())

    def authenticate_operator(self, token: str) -> operators.OperatorToken:
        with self.db.transaction() as session:
            return operators.authenticate_operator(session, token)

    # -- models and artifacts -------------------------------------------------------------

    def register_model(
        self,
        name: str,
        version: str,
        format: str,
        artifact_path: str | os.PathLike[str],
        card: Mapping[str, Any] | None = None,
    ) -> models.ModelVersion:
        """Store the artifact content-addressed, then record the version with its card.

        The file is stored before the transaction: if recording fails, the bytes stay in
        the store unreferenced (harmless; the same bytes registered again reuse them).
        """
        path = Path(artifact_path)
        stored = self.store.put_file(path)
        with self.db.transaction() as session:
            return models.register_model_version(
                session,
                name,
                version=version,
                format=format,
                stored=stored,
                filename=path.name,
                card=card,
                now=self.now(),
            )

    def list_models(self, *, name: str | None = None) -> list[models.ModelVersion]:
        with self.db.transaction() as session:
            return models.list_model_versions(session, name=name)

    def model_version(self, name: str, version: str, format: str) -> models.ModelVersion:
        with self.db.transaction() as session:
            return models.get_model_version(session, name, version, format)

    def artifact(self, sha256: str) -> artifacts.Artifact:
        with self.db.transaction() as session:
            return artifacts.get_artifact(session, sha256)

    def artifact_file(self, sha256: str) -> Path:
        """Where a registered artifact's bytes are; NotFound if unknown or missing on disk."""
        artifacts.ArtifactStore.relative_path(sha256)  # InvalidRequest for a malformed hash
        record = self.artifact(sha256)
        path = self.store.root / record.path
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is registered but missing from {self.store.root}")
        return path

    # -- telemetry ------------------------------------------------------------------------

    def telemetry_tail(
        self,
        device_id: str,
        *,
        limit: int = 20,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[telemetry.TelemetryRecord]:
        with self.db.transaction() as session:
            return telemetry.tail(session, device_id, limit=limit, since=since, until=until)

    def telemetry_series(
        self, device_id: str, *, since: datetime, until: datetime | None = None
    ) -> list[telemetry.Rollup]:
        with self.db.transaction() as session:
            end = until if until is not None else self.now()
            return telemetry.series(session, device_id, since=since, until=end)

    def device_events(self, device_id: str, *, limit: int = 50) -> list[telemetry.DeviceEvent]:
        with self.db.transaction() as session:
            return telemetry.events(session, device_id, limit=limit)

    # -- hard examples (cloud_hub.hard_examples) ------------------------------------------

    def list_hard_examples(
        self,
        *,
        fleet: str | None = None,
        model: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[hard_examples.HardExample]:
        """The newest ``limit`` hard examples (ids below ``before_id``), newest first."""
        with self.db.transaction() as session:
            return hard_examples.list_hard_examples(
                session, fleet=fleet, model=model, limit=limit, before=before_id
            )

    def count_hard_examples(self, *, fleet: str | None = None, model: str | None = None) -> int:
        with self.db.transaction() as session:
            return hard_examples.count_hard_examples(session, fleet=fleet, model=model)

    def export_hard_examples(
        self,
        *,
        fleet: str | None = None,
        model: str | None = None,
        limit: int = 10_000,
        before_id: int | None = None,
    ) -> hard_examples.Export:
        """The newest ``limit`` examples with inputs as an .npz, for retraining."""
        with self.db.transaction() as session:
            return hard_examples.export_npz(
                session, fleet=fleet, model=model, limit=limit, before=before_id
            )
