"""``/rollouts``: start, list, follow, pause, resume and abort staged model updates.

The same service as ``cloud-hub push`` and ``cloud-hub rollout``
(:class:`cloud_hub.rollouts.Rollouts`), with the same checks: a bad gate or wave list is a
422 naming it, a device already in an unfinished rollout or a state change that does not
apply (resuming an aborted rollout) a 409. The hub's controller (``cloud-hub serve``)
runs what is started here; these routes only change what it reads.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from ..rollouts import Rollouts
from .auth import RegistryDep
from .errors import responses
from .schemas import (
    NAME_PATTERN,
    RolloutAbort,
    RolloutCreate,
    RolloutOut,
    RolloutState,
)

router = APIRouter(prefix="/rollouts", tags=["rollouts"])

RolloutId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^ro-[A-Za-z0-9_-]+$")]


@router.get(
    "",
    response_model=list[RolloutOut],
    summary="List rollouts, newest first",
    responses=responses(404, 422),
)
def list_rollouts(
    registry: RegistryDep,
    fleet: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NAME_PATTERN)] = None,
    state: RolloutState | None = None,
) -> list[RolloutOut]:
    found = Rollouts(registry).list(fleet=fleet, state=state)
    return [RolloutOut.model_validate(rollout) for rollout in found]


@router.post(
    "",
    response_model=RolloutOut,
    status_code=status.HTTP_201_CREATED,
    summary="Start a rollout",
    description="Canary first, then the waves; each step advances once its devices' "
    "telemetry has passed every gate for the soak time. The targeted devices are told to "
    "check in at once over MQTT.",
    responses=responses(404, 409, 422),
)
def start_rollout(registry: RegistryDep, body: RolloutCreate) -> RolloutOut:
    rollout = Rollouts(registry).push(
        body.model,
        body.version,
        fleet=body.fleet,
        format=body.format,
        devices=body.devices,
        canary_pct=body.canary_pct,
        waves_pct=body.waves_pct,
        soak=timedelta(seconds=body.soak_s),
        probation=timedelta(seconds=body.probation_s),
        gates=body.gates,
        failure_tolerance=body.max_failures_pct / 100,
    )
    return RolloutOut.model_validate(rollout)


@router.get(
    "/{rollout_id}",
    response_model=RolloutOut,
    summary="Show a rollout: its steps and every device's phase",
    responses=responses(404, 422),
)
def get_rollout(registry: RegistryDep, rollout_id: RolloutId) -> RolloutOut:
    return RolloutOut.model_validate(Rollouts(registry).get(rollout_id))


@router.post(
    "/{rollout_id}/pause",
    response_model=RolloutOut,
    summary="Pause a running rollout",
    description="Downloads in progress are called off; installed devices stay installed.",
    responses=responses(404, 409, 422),
)
def pause_rollout(registry: RegistryDep, rollout_id: RolloutId) -> RolloutOut:
    return RolloutOut.model_validate(Rollouts(registry).pause(rollout_id))


@router.post(
    "/{rollout_id}/resume",
    response_model=RolloutOut,
    summary="Resume a paused rollout",
    responses=responses(404, 409, 422),
)
def resume_rollout(registry: RegistryDep, rollout_id: RolloutId) -> RolloutOut:
    return RolloutOut.model_validate(Rollouts(registry).resume(rollout_id))


@router.post(
    "/{rollout_id}/abort",
    response_model=RolloutOut,
    summary="Abort a rollout for good",
    responses=responses(404, 409, 422),
)
def abort_rollout(
    registry: RegistryDep, rollout_id: RolloutId, body: RolloutAbort | None = None
) -> RolloutOut:
    reason = body.reason if body is not None else None
    return RolloutOut.model_validate(Rollouts(registry).abort(rollout_id, reason=reason))
