"""``/devices/{id}/telemetry|rollups|events``: what a device reported.

Times in queries are ISO 8601; one without an offset is taken as UTC. ``telemetry``
selects raw messages by when the hub received them, ``rollups`` per-minute aggregates by
their minute (the device's clock), both in ``since <= t < until``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Query

from ..errors import InvalidRequest
from .auth import RegistryDep
from .devices import DeviceId
from .errors import responses
from .schemas import DeviceEventOut, RollupOut, TelemetryRecordOut

router = APIRouter(prefix="/devices/{device_id}", tags=["telemetry"])

MAX_LIMIT = 1000
DEFAULT_ROLLUP_SPAN = timedelta(hours=1)

Since = Annotated[datetime | None, Query(description="from (inclusive); no offset means UTC")]
Until = Annotated[datetime | None, Query(description="to (exclusive); no offset means UTC")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many, the latest")]


@router.get(
    "/telemetry",
    response_model=list[TelemetryRecordOut],
    summary="A device's raw telemetry messages",
    description="The latest `limit` messages received in [since, until), oldest first.",
    responses=responses(404, 422),
)
def telemetry(
    registry: RegistryDep,
    device_id: DeviceId,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
) -> list[TelemetryRecordOut]:
    start, end = _utc("since", since), _utc("until", until)
    _check_order(start, end)
    records = registry.telemetry_tail(device_id, limit=limit, since=start, until=end)
    return [TelemetryRecordOut.model_validate(record) for record in records]


@router.get(
    "/rollups",
    response_model=list[RollupOut],
    summary="A device's per-minute telemetry",
    description="Per-minute rollups in [since, until), in time order. `until` defaults to "
    "now and `since` to an hour before `until`; a series spans at most 31 days.",
    responses=responses(404, 422),
)
def rollups(
    registry: RegistryDep,
    device_id: DeviceId,
    since: Since = None,
    until: Until = None,
) -> list[RollupOut]:
    end = _utc("until", until) or registry.now()
    start = _utc("since", since) or _minus(end, DEFAULT_ROLLUP_SPAN)
    _check_order(start, end)
    series = registry.telemetry_series(device_id, since=start, until=end)
    return [RollupOut.model_validate(rollup) for rollup in series]


@router.get(
    "/events",
    response_model=list[DeviceEventOut],
    summary="A device's events",
    description="The latest `limit` events, oldest first.",
    responses=responses(404, 422),
)
def events(registry: RegistryDep, device_id: DeviceId, limit: Limit = 50) -> list[DeviceEventOut]:
    found = registry.device_events(device_id, limit=limit)
    return [DeviceEventOut.model_validate(event) for event in found]


def _utc(name: str, moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidRequest(f"{name} {moment.isoformat()} is out of range in UTC") from None


def _minus(moment: datetime, span: timedelta) -> datetime:
    try:
        return moment - span
    except OverflowError:
        raise InvalidRequest(f"until {moment.isoformat()} is too early") from None


def _check_order(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise InvalidRequest(
            f"until ({until.isoformat()}) must be after since ({since.isoformat()})"
        )
