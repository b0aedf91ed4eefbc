"""``/fleets``: list, create, show and change fleets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from .auth import RegistryDep
from .errors import responses
from .schemas import NAME_PATTERN, FleetCreate, FleetOut, FleetUpdate

router = APIRouter(prefix="/fleets", tags=["fleets"])

FleetName = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]


@router.get("", response_model=list[FleetOut], summary="List fleets")
def list_fleets(registry: RegistryDep) -> list[FleetOut]:
    return [FleetOut.model_validate(fleet) for fleet in registry.list_fleets()]


@router.post(
    "",
    response_model=FleetOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a fleet",
    responses=responses(409, 422),
)
def create_fleet(registry: RegistryDep, body: FleetCreate) -> FleetOut:
    return FleetOut.model_validate(registry.create_fleet(body.name, keep_inputs=body.keep_inputs))


@router.get(
    "/{name}", response_model=FleetOut, summary="Show a fleet", responses=responses(404, 422)
)
def get_fleet(registry: RegistryDep, name: FleetName) -> FleetOut:
    return FleetOut.model_validate(registry.fleet(name))


@router.patch(
    "/{name}",
    response_model=FleetOut,
    summary="Change a fleet",
    description="Set what is given; omitted fields stay as they are. Turning `keep_inputs` "
    "off stops the hub keeping offloaded inputs of this fleet (it keeps the answers only) "
    "from the recorder's next batch; inputs already kept stay until evicted.",
    responses=responses(404, 422),
)
def update_fleet(registry: RegistryDep, name: FleetName, body: FleetUpdate) -> FleetOut:
    return FleetOut.model_validate(registry.update_fleet(name, keep_inputs=body.keep_inputs))
