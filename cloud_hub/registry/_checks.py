"""Checks on what callers hand the registry; each raises InvalidRequest naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest

# Fleet, model and device names end up in MQTT topics, file names and URLs.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_FORMAT = re.compile(r"[a-z0-9][a-z0-9._-]*")


def name(kind: str, value: str, max_length: int = 64) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > max_length:
        raise InvalidRequest(
            f"{kind} {value!r} is not a valid name (1-{max_length} letters, digits, '.', "
            "'_' or '-', starting with a letter or digit)"
        )
    return value


def version(value: str) -> str:
    if not isinstance(value, str) or not _VERSION.fullmatch(value) or len(value) > 64:
        raise InvalidRequest(
            f"version {value!r} is not valid (1-64 letters, digits, '.', '_', '+' or '-')"
        )
    return value


def model_format(value: str) -> str:
    if not isinstance(value, str) or not _FORMAT.fullmatch(value) or len(value) > 32:
        raise InvalidRequest(
            f"format {value!r} is not valid (lower-case, like onnx-int8 or tflite-int8)"
        )
    return value


def text(field: str, value: str | None, max_length: int, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, not {type(value).__name__}")
    if len(value) > max_length:
        raise InvalidRequest(f"{field} is {len(value)} characters long (at most {max_length})")
    if "\0" in value:
        raise InvalidRequest(f"{field} contains a NUL character")
    return value


def json_object(field: str, value: Mapping[str, Any] | None, max_bytes: int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{field} must be a JSON object, not {type(value).__name__}")
    try:
        encoded = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{field} is not JSON-serialisable ({exc})") from exc
    if len(encoded) > max_bytes:
        raise InvalidRequest(f"{field} is {len(encoded)} bytes as JSON (at most {max_bytes})")
    # A plain-JSON copy: what the caller keeps cannot change what is stored.
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def positive(field: str, value: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidRequest(f"{field} = {value!r} must be a whole number from 1 to {maximum}")
    return value
