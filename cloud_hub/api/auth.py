"""Who may call the API: operators with a bearer token, checked against the registry.

``Authorization: Bearer eop_...`` (made with ``cloud-hub operator-token create NAME``).
A missing or wrong token is 401 with ``WWW-Authenticate: Bearer``; a revoked one is 403
(the registry says which). The registry the routes use comes from the app's state, so
the app factory needs no globals; so do the settings.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import Unauthorized
from ..registry import OperatorToken, Registry
from ..settings import HubSettings

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="operatorToken",
    description="An operator token: cloud-hub operator-token create NAME",
)

_MISSING = (
    "missing operator token: send 'Authorization: Bearer TOKEN' "
    "(make one with cloud-hub operator-token create NAME)"
)


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def get_settings(request: Request) -> HubSettings:
    settings: HubSettings = request.app.state.settings
    return settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[HubSettings, Depends(get_settings)]


def require_operator(
    registry: RegistryDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> OperatorToken:
    """The operator calling; Unauthorized (401) or Forbidden (403) otherwise."""
    if credentials is None:
        raise Unauthorized(_MISSING)
    return registry.authenticate_operator(credentials.credentials)


Operator = Annotated[OperatorToken, Depends(require_operator)]
