"""``/devices``: list devices with filters and pages, show one, revoke one."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from ..broker import revoke_on_broker
from .auth import RegistryDep, SettingsDep
from .errors import responses
from .schemas import NAME_PATTERN, VERSION_PATTERN, DeviceOut, DevicePage

_LOG = logging.getLogger(__name__)

router = APIRouter(prefix="/devices", tags=["devices"])

MAX_PAGE = 1000
MAX_OFFSET = 10_000_000

DeviceId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN, description="dev-...")
]


@router.get(
    "",
    response_model=DevicePage,
    summary="List devices",
    description="Devices matching every filter given, by fleet then id. status=revoked "
    "lists revoked devices; offline includes them (a revoked device is offline).",
    responses=responses(404, 422),
)
def list_devices(
    registry: RegistryDep,
    fleet: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NAME_PATTERN)] = None,
    profile: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NAME_PATTERN)] = None,
    status: Literal["online", "offline", "unknown", "revoked"] | None = None,
    model_version: Annotated[
        str | None, Query(min_length=1, max_length=64, pattern=VERSION_PATTERN)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DevicePage:
    revoked = True if status == "revoked" else None
    found = registry.list_devices(
        fleet=fleet,
        profile=profile,
        status=None if status == "revoked" else status,
        model_version=model_version,
        revoked=revoked,
    )
    page = found[offset : offset + limit]
    return DevicePage(
        items=[DeviceOut.model_validate(device) for device in page],
        total=len(found),
        limit=limit,
        offset=offset,
    )


@router.get(
    "/{device_id}",
    response_model=DeviceOut,
    summary="Show a device",
    responses=responses(404, 422),
)
def get_device(registry: RegistryDep, device_id: DeviceId) -> DeviceOut:
    return DeviceOut.model_validate(registry.device(device_id))


@router.post(
    "/{device_id}/revoke",
    response_model=DeviceOut,
    summary="Revoke a device",
    description="Cut the device off: it and every credential it holds are refused from "
    "now on, by gRPC and (when the hub manages the broker's users) by the MQTT broker. It "
    "keeps its history. Revoking a revoked device changes nothing. A 503 says the device "
    "is revoked but the broker could not be updated, and how to finish.",
    responses=responses(404, 422),
)
def revoke_device(registry: RegistryDep, settings: SettingsDep, device_id: DeviceId) -> DeviceOut:
    device = registry.revoke_device(device_id)
    # As 'cloud-hub device revoke' does: 503 naming the fix if the broker is not updated.
    _LOG.info(
        "revoked device %s; %s", device.id, revoke_on_broker(registry.db, settings, device.id)
    )
    return DeviceOut.model_validate(device)
