"""The base of the registry's views: frozen dataclasses that turn into plain JSON."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


class View:
    """Mixin for the frozen dataclasses the registry returns.

    Views are snapshots: they hold no session and no lazy attributes, so a transport can
    keep them, serialise them or pass them across threads.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 strings with their UTC offset."""
        plain: dict[str, Any] = _plain(self)
        return plain
