"""``/enrollment-tokens``: make and list the tokens devices enroll with."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, status

from ..registry import EnrollmentToken
from .auth import RegistryDep
from .errors import responses
from .schemas import NAME_PATTERN, EnrollmentTokenCreate, EnrollmentTokenOut, IssuedEnrollmentToken

router = APIRouter(prefix="/enrollment-tokens", tags=["enrollment"])


@router.post(
    "",
    response_model=IssuedEnrollmentToken,
    status_code=status.HTTP_201_CREATED,
    summary="Make an enrollment token",
    description="The token is in this response only; the hub keeps its hash. A device "
    "trades it for its own identity with 'edge-agent enroll --hub HOST:PORT --token TOKEN'.",
    responses=responses(404, 422),
)
def create_enrollment_token(
    registry: RegistryDep, body: EnrollmentTokenCreate
) -> IssuedEnrollmentToken:
    issued = registry.create_enrollment_token(
        body.fleet, ttl=timedelta(seconds=body.ttl_s), uses=body.uses
    )
    shown = _out(issued.info, registry.now())
    return IssuedEnrollmentToken(**shown.model_dump(), token=issued.token)


@router.get(
    "",
    response_model=list[EnrollmentTokenOut],
    summary="List enrollment tokens (never their secrets)",
    responses=responses(404, 422),
)
def list_enrollment_tokens(
    registry: RegistryDep,
    fleet: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NAME_PATTERN)] = None,
) -> list[EnrollmentTokenOut]:
    now = registry.now()
    return [_out(token, now) for token in registry.list_enrollment_tokens(fleet=fleet)]


def _out(token: EnrollmentToken, now: datetime) -> EnrollmentTokenOut:
    return EnrollmentTokenOut.model_validate(
        {**dataclasses.asdict(token), "state": token.state(now)}
    )
