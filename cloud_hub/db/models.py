"""The hub's tables, as SQLAlchemy 2 declarative models.

Every datetime is timezone-aware UTC (:class:`~cloud_hub.db.types.UTCDateTime`). Secrets
are never stored: tokens and device credentials keep the sha256 of a 256-bit random
secret (a fast hash is enough for secrets that cannot be guessed from a dictionary; see
:mod:`cloud_hub.registry._secret`). The schema is created and changed only by the Alembic
migrations in :mod:`cloud_hub.migrations`; a test checks that they agree with this module.

Tables::

    fleets              a group of devices sharing topics, tokens and rollouts
    devices             one enrolled device: identity, what it runs, whether it is online
    device_credentials  the hashed secrets a device authenticates with (gRPC and MQTT)
    enrollment_tokens   expiring, counted, revocable tokens that enroll devices in a fleet
    operator_tokens     bearer tokens for the REST API
    models              a model name; model_versions holds its versions per format
    model_versions      one registered (model, version, format) -> artifact + model card
    artifacts           content-addressed files (sha256 -> size, path in the store)
    telemetry_raw       each telemetry message as received; unique (device, boot, seq) dedupes
    telemetry_rollups   per-device per-minute aggregates, kept after raw data expires
    device_events       things devices report on their events topic
    rollouts            a model version going out to a fleet in steps (cloud_hub.rollouts)
    rollout_waves       one step of a rollout (canary, wave 1, ...): its devices and times
    device_assignments  what one device should run in one rollout, and how far it got
    hard_examples       offloaded inputs with the cloud's and the edge's answers, per fleet
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .types import UTCDateTime, utcnow

# Deterministic constraint names, so migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DEVICE_STATUSES = ("online", "offline", "unknown")

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads it from the class)
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Fleet(Base):
    __tablename__ = "fleets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Whether devices in this fleet may send the inputs they offload for retraining.
    keep_inputs: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint(f"status IN {DEVICE_STATUSES!r}", name="status"),
        Index(None, "fleet_id", "status"),
        Index(None, "model_version"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "dev-<12 hex>"
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"))
    hostname: Mapped[str] = mapped_column(String(255))
    profile: Mapped[str | None] = mapped_column(String(64))
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    public_key_pem: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    last_seen_at: Mapped[datetime | None]
    boot_id: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    fleet: Mapped[Fleet] = relationship(lazy="joined", innerjoin=True)


class DeviceCredential(Base):
    __tablename__ = "device_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the secret
    # The same secret as Mosquitto's PBKDF2-SHA512 "$7$..." hash, for the broker's password
    # file (cloud_hub.broker); None when the hub did not manage the broker at enrollment.
    broker_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    __table_args__ = (
        CheckConstraint("uses_count >= 0 AND uses_count <= uses_allowed", name="uses"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # 12 hex, public
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the secret part
    expires_at: Mapped[datetime]
    uses_allowed: Mapped[int]
    uses_count: Mapped[int] = mapped_column(default=0)
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    fleet: Mapped[Fleet] = relationship(lazy="joined", innerjoin=True)


class OperatorToken(Base):
    __tablename__ = "operator_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # 12 hex, public
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Artifact(Base):
    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(255))  # relative to the artifact store's root
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", "format"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))  # onnx-int8, tflite-int8, ...
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # the name it was registered under
    card: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(lazy="joined", innerjoin=True)
    artifact: Mapped[Artifact] = relationship(lazy="joined", innerjoin=True)


class TelemetryRaw(Base):
    """One telemetry message. The unique (device, boot, seq) constraint is the dedupe."""

    __tablename__ = "telemetry_raw"
    __table_args__ = (
        UniqueConstraint("device_id", "boot_id", "seq"),
        Index(None, "device_id", "received_at"),
        Index(None, "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    boot_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime]  # the device's clock: end of the aggregation window
    received_at: Mapped[datetime]  # the hub's clock
    payload: Mapped[dict[str, Any]]


class TelemetryRollup(Base):
    """Per-device per-minute aggregate of the telemetry messages whose window ended in it.

    Every column can be maintained incrementally as messages arrive: counts add up,
    latency percentiles and system readings keep the worst (max) of the minute, and the
    confidence mean is ``confidence_sum / requests`` (each message adds its mean times its
    request count).
    """

    __tablename__ = "telemetry_rollups"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)  # truncated to the minute
    count: Mapped[int] = mapped_column(default=0)  # messages folded in
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    offloads: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    latency_p99_ms: Mapped[float | None] = mapped_column(Float)
    confidence_sum: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_pct_max: Mapped[float | None] = mapped_column(Float)
    mem_pct_max: Mapped[float | None] = mapped_column(Float)
    temp_c_max: Mapped[float | None] = mapped_column(Float)


class DeviceEvent(Base):
    __tablename__ = "device_events"
    __table_args__ = (Index(None, "device_id", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    ts: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)


ROLLOUT_STATES = ("running", "paused", "halted", "aborted", "completed")
# What a device should run in a rollout: nothing yet, the rollout's model, or what it ran before.
ASSIGNMENT_DESIRES = ("none", "target", "previous")


class Rollout(Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        CheckConstraint(f"state IN {ROLLOUT_STATES!r}", name="state"),
        Index(None, "state"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # "ro-<10 hex>"
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    state: Mapped[str] = mapped_column(String(16))
    plan: Mapped[dict[str, Any]]  # canary/waves percentages and the devices asked for
    gates: Mapped[list[str]] = mapped_column(JSON)  # as given: ["p99_ms<=50", ...]
    soak_seconds: Mapped[int]
    probation_seconds: Mapped[int]
    failure_tolerance: Mapped[float] = mapped_column(Float)  # share of a wave that may fail
    reason: Mapped[str | None] = mapped_column(Text)  # why it halted or was aborted
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    fleet: Mapped[Fleet] = relationship(lazy="joined", innerjoin=True)
    model_version: Mapped[ModelVersion] = relationship(lazy="joined", innerjoin=True)


class RolloutWave(Base):
    __tablename__ = "rollout_waves"

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    wave_index: Mapped[int] = mapped_column(primary_key=True)  # 0 = the first step
    name: Mapped[str] = mapped_column(String(16))  # "canary", "wave 1", ...
    device_ids: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[datetime | None]
    passed_at: Mapped[datetime | None]
    rolled_back_at: Mapped[datetime | None]


class DeviceAssignment(Base):
    __tablename__ = "device_assignments"
    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id"),
        CheckConstraint(f"desired IN {ASSIGNMENT_DESIRES!r}", name="desired"),
        Index(None, "device_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    wave_index: Mapped[int]
    desired: Mapped[str] = mapped_column(String(16))
    target_version: Mapped[str] = mapped_column(String(64))
    previous_model: Mapped[str | None] = mapped_column(String(128))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(16))  # pending, downloading, ..., installed
    percent: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    reported_version: Mapped[str | None] = mapped_column(String(64))  # the report's model
    installed_at: Mapped[datetime | None]
    notify: Mapped[bool] = mapped_column(default=False)  # "check in now" not yet sent
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class HardExample(Base):
    """One offloaded input with both answers (cloud_hub.hard_examples).

    ``id`` orders rows by arrival: listing pages and eviction (oldest first) go by it.
    ``inputs`` is an .npz of the input tensors (one sample each), NULL when the fleet keeps
    no inputs; ``input_bytes`` is its length (0 then), what the per-fleet byte bound counts.
    """

    __tablename__ = "hard_examples"
    __table_args__ = (
        Index(None, "fleet_id", "id"),
        Index(None, "fleet_id", "model", "id"),
        Index(None, "model", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]
    inputs: Mapped[bytes | None] = mapped_column(LargeBinary)
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    cloud_label: Mapped[int | None]
    cloud_score: Mapped[float | None] = mapped_column(Float)
    edge_label: Mapped[int | None]
    edge_score: Mapped[float | None] = mapped_column(Float)
    edge_version: Mapped[str | None] = mapped_column(String(64))
    agreed: Mapped[bool | None]
