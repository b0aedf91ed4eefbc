"""The fleet registry: the hub's one core, called by every transport.

:class:`Registry` is the public surface: fleets, enrollment tokens and enrollment,
devices and their credentials, operator tokens, the model registry with its
content-addressed artifact store, and telemetry queries. It returns frozen views (below)
and raises :mod:`cloud_hub.errors`. It imports nothing from FastAPI, gRPC or MQTT.

::

    from cloud_hub.registry import Registry
    from cloud_hub.settings import load_settings

    with Registry.open(load_settings()) as registry:
        registry.create_fleet("lab")
        issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=10)
        enrolled = registry.redeem_enrollment_token(
            issued.token, public_key_pem=pem, hostname="pi-17", profile="raspberry-pi-5"
        )
        registry.authenticate_device(enrolled.device.id, enrolled.secret)
"""

from __future__ import annotations

from .artifacts import Artifact, ArtifactStore, StoredFile
from .devices import Device
from .enrollment import Enrollment
from .fleets import Fleet
from .models import ModelVersion
from .operators import IssuedOperatorToken, OperatorToken
from .service import Clock, Registry
from .telemetry import DeviceEvent, Rollup, TelemetryRecord
from .tokens import EnrollmentToken, IssuedToken

__all__ = [
    "Artifact",
    "ArtifactStore",
    "Clock",
    "Device",
    "DeviceEvent",
    "Enrollment",
    "EnrollmentToken",
    "Fleet",
    "IssuedOperatorToken",
    "IssuedToken",
    "ModelVersion",
    "OperatorToken",
    "Registry",
    "Rollup",
    "StoredFile",
    "TelemetryRecord",
]
