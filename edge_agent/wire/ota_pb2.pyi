from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdatePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_PHASE_UNSPECIFIED: _ClassVar[UpdatePhase]
    UPDATE_PHASE_DOWNLOADING: _ClassVar[UpdatePhase]
    UPDATE_PHASE_VERIFYING: _ClassVar[UpdatePhase]
    UPDATE_PHASE_STAGED: _ClassVar[UpdatePhase]
    UPDATE_PHASE_HEALTH_CHECK: _ClassVar[UpdatePhase]
    UPDATE_PHASE_INSTALLED: _ClassVar[UpdatePhase]
    UPDATE_PHASE_FAILED: _ClassVar[UpdatePhase]
    UPDATE_PHASE_ROLLED_BACK: _ClassVar[UpdatePhase]
UPDATE_PHASE_UNSPECIFIED: UpdatePhase
UPDATE_PHASE_DOWNLOADING: UpdatePhase
UPDATE_PHASE_VERIFYING: UpdatePhase
UPDATE_PHASE_STAGED: UpdatePhase
UPDATE_PHASE_HEALTH_CHECK: UpdatePhase
UPDATE_PHASE_INSTALLED: UpdatePhase
UPDATE_PHASE_FAILED: UpdatePhase
UPDATE_PHASE_ROLLED_BACK: UpdatePhase

class CheckInRequest(_message.Message):
    __slots__ = ("device_id", "boot_id", "model_name", "model_version", "model_format", "slot", "profile", "free_disk_bytes", "last_status", "agent_version")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    FREE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    boot_id: str
    model_name: str
    model_version: str
    model_format: str
    slot: str
    profile: str
    free_disk_bytes: int
    last_status: StatusReport
    agent_version: str
    def __init__(self, device_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., model_format: _Optional[str] = ..., slot: _Optional[str] = ..., profile: _Optional[str] = ..., free_disk_bytes: _Optional[int] = ..., last_status: _Optional[_Union[StatusReport, _Mapping]] = ..., agent_version: _Optional[str] = ...) -> None: ...

class Gate(_message.Message):
    __slots__ = ("metric", "max_value", "min_value")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    max_value: float
    min_value: float
    def __init__(self, metric: _Optional[str] = ..., max_value: _Optional[float] = ..., min_value: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("rollout_id", "model_name", "model_version", "model_format", "target_path", "probation_seconds", "gates")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    PROBATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model_name: str
    model_version: str
    model_format: str
    target_path: str
    probation_seconds: int
    gates: _containers.RepeatedCompositeFieldContainer[Gate]
    def __init__(self, rollout_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., model_format: _Optional[str] = ..., target_path: _Optional[str] = ..., probation_seconds: _Optional[int] = ..., gates: _Optional[_Iterable[_Union[Gate, _Mapping]]] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("assignment", "next_check_in_seconds")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHECK_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    next_check_in_seconds: int
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ..., next_check_in_seconds: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("path", "offset", "max_length")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    max_length: int
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., max_length: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("offset", "data", "total_length", "last")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_length: int
    last: bool
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_length: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("device_id", "rollout_id", "phase", "percent", "reason", "model_name", "model_version", "timestamp_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    rollout_id: str
    phase: UpdatePhase
    percent: int
    reason: str
    model_name: str
    model_version: str
    timestamp_ms: int
    def __init__(self, device_id: _Optional[str] = ..., rollout_id: _Optional[str] = ..., phase: _Optional[_Union[UpdatePhase, str]] = ..., percent: _Optional[int] = ..., reason: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class StatusAck(_message.Message):
    __slots__ = ("accepted", "abort")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    abort: bool
    def __init__(self, accepted: _Optional[bool] = ..., abort: _Optional[bool] = ...) -> None: ...
