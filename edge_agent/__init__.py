"""edgeloop's edge agent: runs quantized models on the device and talks to the hub.

The public in-process API::

    from edge_agent import Engine
    engine = Engine.load("model.tflite")          # picks the backend for this device
    outputs = engine.run({"image": batch})
"""

from __future__ import annotations

from .engine import Classification, Engine
from .errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    EdgeAgentError,
    InputError,
    ModelError,
    ModelFormatError,
    ModelLoadError,
    TransportError,
)
from .formats import ModelFormat
from .profiles import DeviceProfile, load_profile

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "Classification",
    "ConfigError",
    "DeviceProfile",
    "EdgeAgentError",
    "Engine",
    "InputError",
    "ModelError",
    "ModelFormat",
    "ModelFormatError",
    "ModelLoadError",
    "TransportError",
    "__version__",
    "load_profile",
]
