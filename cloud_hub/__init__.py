"""edgeloop's cloud hub: fleet registry, telemetry, offload answers, retraining and OTA."""

from __future__ import annotations

__version__ = "0.1.0"
