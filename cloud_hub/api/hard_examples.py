"""``/hard-examples``: what devices offloaded, with the cloud's and the edge's answers.

The list is newest first and pages by id: pass a page's ``next_before`` as ``before`` to
get the next (older) one. The export is an .npz of the examples that kept their inputs
(layout in :mod:`cloud_hub.hard_examples.queries`), built in memory: ``limit`` bounds it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ..hard_examples import MAX_EXPORT, MAX_LIST
from .auth import RegistryDep
from .errors import responses
from .schemas import NAME_PATTERN, HardExampleOut, HardExamplePage

router = APIRouter(prefix="/hard-examples", tags=["hard examples"])

MAX_ID = 2**63 - 1

Fleet = Annotated[
    str | None, Query(min_length=1, max_length=64, pattern=NAME_PATTERN, description="fleet name")
]
Model = Annotated[
    str | None, Query(min_length=1, max_length=128, pattern=NAME_PATTERN, description="model name")
]
Before = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="only examples with a smaller id (paging)")
]


@router.get(
    "",
    response_model=HardExamplePage,
    summary="List hard examples, newest first",
    responses=responses(404, 422),
)
def list_examples(
    registry: RegistryDep,
    fleet: Fleet = None,
    model: Model = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="page size")] = 100,
    before: Before = None,
) -> HardExamplePage:
    found = registry.list_hard_examples(fleet=fleet, model=model, limit=limit, before_id=before)
    return HardExamplePage(
        items=[HardExampleOut.model_validate(example) for example in found],
        total=registry.count_hard_examples(fleet=fleet, model=model),
        next_before=found[-1].id if len(found) == limit else None,
    )


@router.get(
    "/export",
    response_class=Response,
    summary="Export hard examples with their inputs as .npz",
    description="The newest `limit` examples that kept their inputs, oldest first: "
    "`x_<input>` stacked inputs, `cloud_label`, `edge_label` (-1: none), scores, `agreed`, "
    "`id`, `device_id`, `model_version`, `received_at`. One model at a time (422 "
    "otherwise). `X-Edgeloop-Count` says how many examples it holds.",
    responses={
        200: {
            "description": "An uncompressed .npz (numpy.load, allow_pickle=False)",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **responses(404, 422),
    },
)
def export_examples(
    registry: RegistryDep,
    fleet: Fleet = None,
    model: Model = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EXPORT, description="at most this many")] = 10_000,
    before: Before = None,
) -> Response:
    export = registry.export_hard_examples(fleet=fleet, model=model, limit=limit, before_id=before)
    return Response(
        export.data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": 'attachment; filename="hard-examples.npz"',
            "X-Edgeloop-Count": str(export.count),
        },
    )
