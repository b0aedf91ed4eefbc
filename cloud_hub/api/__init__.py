"""The hub's REST API (FastAPI): fleets, devices, telemetry, models, artifacts, tokens.

::

    from cloud_hub.api import create_app

    app = create_app(registry, settings)   # serve with uvicorn; OpenAPI at /docs

Routes call the :class:`~cloud_hub.registry.Registry` and nothing else; errors map to
HTTP in :mod:`.errors`. FastAPI stays in this package, out of the hub's core.
"""

from __future__ import annotations

from .app import create_app
from .errors import STATUS_CODES, status_of

__all__ = ["STATUS_CODES", "create_app", "status_of"]
