from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("enrollment_token", "public_key_pem", "hostname", "device_profile", "hardware", "agent_version")
    class HardwareEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PROFILE_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    enrollment_token: str
    public_key_pem: str
    hostname: str
    device_profile: str
    hardware: _containers.ScalarMap[str, str]
    agent_version: str
    def __init__(self, enrollment_token: _Optional[str] = ..., public_key_pem: _Optional[str] = ..., hostname: _Optional[str] = ..., device_profile: _Optional[str] = ..., hardware: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ...) -> None: ...

class DeviceCredential(_message.Message):
    __slots__ = ("secret", "certificate_pem")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    secret: str
    certificate_pem: str
    def __init__(self, secret: _Optional[str] = ..., certificate_pem: _Optional[str] = ...) -> None: ...

class MqttSettings(_message.Message):
    __slots__ = ("host", "port", "username", "password", "topic_prefix", "tls")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    TOPIC_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    username: str
    password: str
    topic_prefix: str
    tls: bool
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., topic_prefix: _Optional[str] = ..., tls: _Optional[bool] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "fleet", "credential", "mqtt", "tuf_root", "hub_endpoint")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    MQTT_FIELD_NUMBER: _ClassVar[int]
    TUF_ROOT_FIELD_NUMBER: _ClassVar[int]
    HUB_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    fleet: str
    credential: DeviceCredential
    mqtt: MqttSettings
    tuf_root: bytes
    hub_endpoint: str
    def __init__(self, device_id: _Optional[str] = ..., fleet: _Optional[str] = ..., credential: _Optional[_Union[DeviceCredential, _Mapping]] = ..., mqtt: _Optional[_Union[MqttSettings, _Mapping]] = ..., tuf_root: _Optional[bytes] = ..., hub_endpoint: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("device_id", "fleet")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    fleet: str
    def __init__(self, device_id: _Optional[str] = ..., fleet: _Optional[str] = ...) -> None: ...
