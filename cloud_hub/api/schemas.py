"""What the REST API accepts and returns, as pydantic models (and so as the OpenAPI schema).

Responses are built from the registry's frozen views with ``model_validate(view)``;
request bodies forbid unknown keys, so a typo is a 422 rather than a silently ignored
field. The patterns here are the registry's own rules for names, versions and formats
(:mod:`cloud_hub.registry._checks`), so a bad name is refused before it reaches the
database, with the same answer on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/api/v1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
FORMAT_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_TOKEN_TTL_S = 365 * 24 * 3600
MAX_TOKEN_USES = 1_000_000

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
DeviceStatus = Literal["online", "offline", "unknown"]
TokenState = Literal["active", "expired", "used-up", "revoked"]


class _View(BaseModel):
    """A response: read from a registry view's attributes."""

    model_config = ConfigDict(from_attributes=True)


class _Body(BaseModel):
    """A request body: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


# -- errors and health --------------------------------------------------------------------


class ErrorDetail(BaseModel):
    location: str = Field(description="where the problem is, e.g. query.limit")
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable: not_found, unauthorized, ...")
    message: str = Field(description="for people: what was wrong and, where known, the fix")
    details: list[ErrorDetail] | None = Field(
        default=None, description="one entry per invalid parameter (validation errors only)"
    )


class ErrorBody(BaseModel):
    error: ErrorInfo


class Health(BaseModel):
    status: Literal["ok"]


# -- fleets -------------------------------------------------------------------------------


class FleetCreate(_Body):
    name: Name
    keep_inputs: bool = Field(
        default=True, description="keep the inputs devices offload, for retraining"
    )


class FleetUpdate(_Body):
    keep_inputs: bool | None = Field(
        default=None,
        description="keep the inputs devices offload, for retraining (omitted: unchanged)",
    )


class FleetOut(_View):
    name: str
    keep_inputs: bool
    created_at: datetime
    devices: int = Field(description="enrolled devices, revoked ones included")


# -- devices ------------------------------------------------------------------------------


class DeviceOut(_View):
    id: str
    fleet: str
    hostname: str
    profile: str | None
    agent_version: str | None
    status: DeviceStatus
    revoked: bool
    revoked_at: datetime | None
    last_seen_at: datetime | None
    boot_id: str | None
    model_name: str | None
    model_version: str | None
    created_at: datetime
    hardware: dict[str, Any]
    public_key_pem: str | None


class DevicePage(BaseModel):
    items: list[DeviceOut]
    total: int = Field(description="devices matching the filters, on every page")
    limit: int
    offset: int


# -- telemetry ----------------------------------------------------------------------------


class TelemetryRecordOut(_View):
    id: int
    device_id: str
    boot_id: str
    seq: int
    ts: datetime = Field(description="the device's clock: end of the aggregation window")
    received_at: datetime = Field(description="the hub's clock")
    payload: dict[str, Any] = Field(description="the message as the device sent it")


class RollupOut(_View):
    device_id: str
    minute: datetime
    count: int = Field(description="telemetry messages folded into this minute")
    requests: int
    errors: int
    offloads: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    confidence_mean: float | None
    cpu_pct_max: float | None
    mem_pct_max: float | None
    temp_c_max: float | None


class DeviceEventOut(_View):
    id: int
    device_id: str
    ts: datetime
    kind: str
    body: dict[str, Any]


# -- models and artifacts -----------------------------------------------------------------


class FormatOut(BaseModel):
    """One format of a model version: its artifact and model card."""

    format: str
    sha256: str
    size: int
    filename: str
    card: dict[str, Any] | None
    created_at: datetime
    content_url: str = Field(description="where to download the artifact's bytes")


class ModelVersionOut(BaseModel):
    model: str
    version: str
    formats: list[FormatOut]


class ModelSummary(BaseModel):
    name: str
    versions: list[str] = Field(description="oldest first")
    formats: list[str]
    latest_version: str
    updated_at: datetime


class ModelDetail(BaseModel):
    name: str
    versions: list[ModelVersionOut] = Field(description="oldest first")


class ArtifactUse(BaseModel):
    model: str
    version: str
    format: str
    filename: str


class ArtifactOut(BaseModel):
    sha256: str
    size: int
    created_at: datetime
    content_url: str
    used_by: list[ArtifactUse]


# -- enrollment tokens --------------------------------------------------------------------


class EnrollmentTokenCreate(_Body):
    fleet: Name
    ttl_s: int = Field(default=3600, ge=1, le=MAX_TOKEN_TTL_S, description="valid for seconds")
    uses: int = Field(default=1, ge=1, le=MAX_TOKEN_USES, description="devices it may enroll")


class EnrollmentTokenOut(_View):
    id: str
    fleet: str
    state: TokenState
    expires_at: datetime
    uses_allowed: int
    uses_count: int
    revoked_at: datetime | None
    created_at: datetime


class IssuedEnrollmentToken(EnrollmentTokenOut):
    token: str = Field(description="shown only now: the hub keeps its hash")


# -- hard examples ------------------------------------------------------------------------


class HardExampleOut(_View):
    id: int = Field(description="arrival order; pass the smallest as `before` for the next page")
    fleet: str
    device_id: str
    model: str
    model_version: str
    received_at: datetime = Field(description="when the hub received the request")
    has_inputs: bool = Field(description="false where the fleet keeps no inputs")
    input_bytes: int = Field(description="size of the stored inputs (.npz)")
    cloud_label: int | None = Field(description="argmax of the cloud model's output")
    cloud_score: float | None = Field(description="max of the cloud model's output")
    edge_label: int | None = Field(description="what the device answered itself")
    edge_score: float | None
    edge_version: str | None = Field(description="the device's model version")
    agreed: bool | None = Field(description="cloud_label == edge_label; null if one is missing")


class HardExamplePage(BaseModel):
    items: list[HardExampleOut] = Field(description="newest first")
    total: int = Field(description="examples matching fleet and model, on every page")
    next_before: int | None = Field(
        description="`before` for the next (older) page; null on the last page"
    )


# -- rollouts -----------------------------------------------------------------------------

RolloutState = Literal["running", "paused", "halted", "aborted", "completed"]
Percent = Annotated[float, Field(ge=0, le=100)]


class RolloutCreate(_Body):
    """What ``cloud-hub push`` takes, as a body; the same checks and defaults."""

    model: Name
    version: str = Field(min_length=1, max_length=64, pattern=VERSION_PATTERN)
    fleet: Name
    format: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        pattern=FORMAT_PATTERN,
        description="needed only when the version is registered in several formats",
    )
    devices: list[Name] | None = Field(
        default=None, max_length=100_000, description="only these devices of the fleet"
    )
    canary_pct: Percent = Field(default=10.0, description="0: no canary")
    waves_pct: list[Percent] = Field(
        default=[25.0, 50.0, 100.0],
        min_length=1,
        max_length=20,
        description="cumulative shares of the devices, rising, ending at 100",
    )
    soak_s: int = Field(default=600, ge=0, le=30 * 24 * 3600, description="per step, seconds")
    probation_s: int = Field(default=600, ge=0, le=30 * 24 * 3600, description="seconds")
    gates: list[str] = Field(
        default=[], max_length=20, description="e.g. 'p99_ms<=50', 'error_rate<=0.01'"
    )
    max_failures_pct: Percent = Field(default=0.0, description="failed installs tolerated")


class RolloutAbort(_Body):
    reason: str | None = Field(default=None, max_length=500)


class RolloutWaveOut(_View):
    index: int
    name: str = Field(description="canary, wave 1, wave 2, ...")
    device_ids: list[str]
    started_at: datetime | None
    passed_at: datetime | None
    rolled_back_at: datetime | None


class RolloutDeviceOut(_View):
    device_id: str
    wave_index: int
    desired: str = Field(description="none (not yet), target, or previous (rolled back)")
    phase: str = Field(description="the device's last reported install phase")
    percent: int
    reason: str | None
    previous_model: str | None
    previous_version: str | None
    reported_version: str | None
    installed_at: datetime | None
    updated_at: datetime


class RolloutOut(_View):
    id: str
    fleet: str
    model: str
    version: str
    format: str
    state: str
    gates: list[str]
    soak_seconds: int
    probation_seconds: int
    failure_tolerance: float
    reason: str | None = Field(description="why it halted or was aborted")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    waves: list[RolloutWaveOut]
    devices: list[RolloutDeviceOut]
