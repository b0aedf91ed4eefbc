"""The REST API's app factory: :func:`create_app` wires the routers to one registry.

Everything under ``/api/v1`` needs an operator token; ``/healthz``, ``/docs`` and
``/openapi.json`` do not. The app holds no globals: the registry and settings live in
``app.state``, so tests and the hub process can make as many apps as they like.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from ..errors import InvalidRequest
from ..registry import Registry
from ..settings import HubSettings
from . import devices, enrollment, fleets, hard_examples, models, rollouts, telemetry
from .auth import RegistryDep, require_operator
from .errors import install_error_handlers, responses
from .schemas import API_PREFIX, Health

TITLE = "edgeloop hub"
DESCRIPTION = (
    "The fleet registry of an edgeloop hub: fleets, devices and their telemetry, models, "
    "versions and artifacts, enrollment tokens, hard examples. Send an operator token as "
    "`Authorization: Bearer TOKEN` (make one with `cloud-hub operator-token create NAME`). "
    'Errors are `{"error": {"code": ..., "message": ...}}`.'
)


def create_app(registry: Registry, settings: HubSettings) -> FastAPI:
    """A FastAPI app serving ``registry``; the caller owns (and closes) the registry."""
    from .. import __version__

    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        version=__version__,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.registry = registry
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(_health_router())
    api = APIRouter(
        prefix=API_PREFIX,
        dependencies=[Depends(require_operator), Depends(_known_query_only)],
        responses=responses(401, 403, 422, 503),
    )
    for module in (fleets, devices, telemetry, models, enrollment, hard_examples, rollouts):
        api.include_router(module.router)
    app.include_router(api)
    return app


def _known_query_only(request: Request) -> None:
    """Refuse query parameters a route does not take: a typo is a 422, not ignored."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        shown = ", ".join(repr(name[:50]) for name in unknown[:5])
        raise InvalidRequest(
            f"unknown query parameter(s) {shown}; this route takes "
            f"{', '.join(sorted(known)) or 'none'}"
        )


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get(
        "/healthz",
        response_model=Health,
        summary="Whether the hub answers and reaches its database",
        responses=responses(503),
    )
    def healthz(registry: RegistryDep) -> Health:
        registry.db.check_connection()
        return Health(status="ok")

    return router
