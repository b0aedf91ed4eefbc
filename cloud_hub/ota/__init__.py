"""Over-the-air model updates on the hub: the TUF repository and the gRPC ``Ota`` service.

See docs/ota.md for how the parts fit.
"""

from __future__ import annotations

from .repository import (
    ExpirySettings,
    TargetInfo,
    TufRepository,
    health_custom,
    target_path_for,
)

__all__ = [
    "ExpirySettings",
    "TargetInfo",
    "TufRepository",
    "health_custom",
    "target_path_for",
]
